"""The CLI's stages on their own and the paths around them: interactive `aigc generate` on a terminal, CSV/TSV
input with bad rows, `aigc collect` and `aigc eval` alone, `data.val_paths`, `aigc run` resuming an
interrupted training, and the shapes recipe end to end. Data comes from tests/fixtures or is made here.
The commands run in this process (tests/e2e/helpers.py) but for a terminal's and a signal's, which need one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers import Tokenizer

from aigc.checkpoint import load_checkpoint
from aigc.data.pairs import split_pairs
from aigc.data.shards import open_split, read_manifest
from aigc.generate.sampling import sampling_params
from aigc.generate.text import TextGenerator
from aigc.tasks.images import shapes
from tests.e2e.helpers import aigc

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=8",
        "train.max_minutes=null", "train.schedule=steps", "train.warmup_steps=5", "train.eval_batches=2",
        "train.threads=2", "eval.samples=2", "eval.max_tokens=2000", "generate.max_new_tokens=16"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text((FIXTURES / "tinyshakespeare_head.txt").read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def text_run(tiny_runs) -> Path:
    """The session's tiny text run (tests/e2e/conftest.py: `aigc run`, 30 steps, eval.samples=2); tests that eval
    into it copy it first."""
    return tiny_runs["text"]


# --- aigc generate on a terminal ---------------------------------------------------------------------------------

def _expected_text(run_dir: Path, prompt: str, max_new_tokens: int, seed: int) -> str:
    """What `aigc generate RUN --prompt PROMPT --max-new-tokens N --seed S` prints (the run's own defaults)."""
    settings = load_checkpoint(run_dir).config.generate.model_copy(update={"max_new_tokens": max_new_tokens})
    generator = TextGenerator.from_checkpoint(run_dir)
    return generator.complete([prompt], sampling_params(settings, seed=seed))[0].text + "\n"


def test_interactive_generate_reads_prompts_from_a_terminal(text_run):
    args = [sys.executable, "-m", "aigc", "generate", str(text_run), "--max-new-tokens", "12", "--seed", "4"]
    expected = _expected_text(text_run, "ROMEO:", 12, 4) + _expected_text(text_run, "KING:", 12, 4)
    master, terminal = os.openpty()
    try:
        process = subprocess.Popen(args, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        os.close(terminal)
        os.write(master, b"ROMEO:\nKING:\n\x04")  # two prompts, then Ctrl-D at the start of a line
        out, err = process.communicate(timeout=120)
    finally:
        os.close(master)
    assert process.returncode == 0, err
    assert "Ctrl-D" in err and err.count("> ") == 3, err  # a prompt before each line read, the last one met EOF
    assert out == expected  # only the two outputs reach stdout, each as --prompt would print it
    piped = aigc(*args[3:], input_text="ROMEO:\nKING:\n")
    assert piped.returncode == 0 and piped.stdout == expected and "> " not in piped.stderr


# --- CSV and TSV with bad rows -----------------------------------------------------------------------------------

def _documents(run_dir: Path, splits=("train", "val")) -> list[str]:
    data_dir = run_dir / "data"
    manifest = read_manifest(data_dir)
    tokenizer = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    eot = manifest["tokenizer"]["eot_id"]
    ids = np.concatenate([np.asarray(open_split(data_dir, s, manifest)) for s in splits]).tolist()
    docs, current = [], []
    for token in ids:
        if token == eot:
            docs.append(tokenizer.decode(current, skip_special_tokens=False))
            current = []
        else:
            current.append(token)
    return docs


def _pairs(run_dir: Path) -> set[tuple[str, str]]:
    manifest = read_manifest(run_dir / "data")
    tokenizer = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    return {(tokenizer.decode(s[:-1].tolist()), tokenizer.decode(t[:-1].tolist()))
            for split in ("train", "val", "test") for s, t in split_pairs(run_dir / "data", manifest, split)}


def _dropped(run_dir: Path) -> dict[str, int]:
    report = json.loads((run_dir / "data" / "cleaning_report.json").read_text())
    return {reason: tally["documents"] for reason, tally in report["dropped"].items()}


GOOD_PAIRS = {("Hi.", "嗨。"), ("Run!", "你用跑的。"), ("Thank you.", "谢谢。"),
              ('He said "no".', "他说“不”。")}


def test_pairs_tsv_with_bad_rows(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("Hi.\t嗨。\tCC-BY 2.0 (France) Attribution: tatoeba.org #1\n"
                   "Run!\t你用跑的。\tCC-BY 2.0 (France) Attribution: tatoeba.org #2\n"
                   "only a source\n"                                    # missing side
                   "\t没有源。\tattribution\n"                            # empty source
                   "No target.\t \tattribution\n"                       # empty (blank) target
                   "Extra.\t多了。\tattribution\tone column too many\n"    # extra column
                   "Thank you.\t谢谢。\tattribution\n"
                   'He said "no".\t他说“不”。\tattribution\n',            # quotes are text in a TSV
                   encoding="utf-8")
    run_dir = tmp_path / "run"
    done = aigc("prepare", "translate", f"data.paths=[{tsv}]", f"run.dir={run_dir}", "tokenizer.vocab_size=300")
    assert done.returncode == 0, done.stderr
    assert _dropped(run_dir) == {"missing_side": 1, "empty_side": 2, "extra_columns": 1}
    assert "dropped: extra_columns" in done.stdout and "pairs.tsv:6" in done.stdout  # the table names the line
    assert _pairs(run_dir) == GOOD_PAIRS  # the rest is prepared, attribution never read
    manifest = read_manifest(run_dir / "data")
    assert manifest["cleaning"]["kept"]["documents"] == 4
    assert sum(manifest["splits"][f"{s}.src"]["documents"] for s in ("train", "val", "test")) == 4
    collected = aigc("collect", "translate", f"data.paths=[{tsv}]", f"run.dir={tmp_path / 'collected'}")
    assert collected.returncode == 0, collected.stderr
    sources = json.loads((tmp_path / "collected" / "data" / "sources.json").read_text())
    assert sources["files"][0]["records"] == 6 and set(sources["unreadable"]) == {"missing_side", "extra_columns"}


def test_pairs_csv_with_named_columns_and_bad_rows(tmp_path):
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text("id,en,zh,note\n"
                        "1,Hi.,嗨。,a\n"
                        "2,Run!,你用跑的。,b\n"
                        "3,only the source\n"                     # missing side
                        "4,,没有源。,c\n"                          # empty source
                        "5,Extra.,多了。,d,e\n"                    # extra column
                        '6,Thank you.,谢谢。,"a note, with a comma"\n'
                        '7,"He said ""no"".",他说“不”。,g\n',       # a quoted field with quotes inside
                        encoding="utf-8")
    run_dir = tmp_path / "run"
    done = aigc("prepare", "translate", f"data.paths=[{csv_file}]", f"run.dir={run_dir}", "data.source_column=en",
                "data.target_column=zh", "tokenizer.vocab_size=300")
    assert done.returncode == 0, done.stderr
    assert _dropped(run_dir) == {"missing_side": 1, "empty_side": 1, "extra_columns": 1}
    assert _pairs(run_dir) == GOOD_PAIRS  # the header row is not a pair
    missing = aigc("prepare", "translate", f"data.paths=[{csv_file}]", f"run.dir={tmp_path / 'bad'}",
                   "data.source_column=english", "data.target_column=zh")
    assert missing.returncode == 2 and "no column 'english'" in missing.stderr and "Traceback" not in missing.stderr


def test_text_column_of_a_csv_with_bad_rows(tmp_path):
    csv_file = tmp_path / "notes.csv"
    csv_file.write_text("id,body,tag\n"
                        "1,the first note,a\n"
                        "2\n"                                     # missing column
                        "3,,b\n"                                  # empty text
                        "4,cut short,by an unquoted comma,c\n"    # extra column: the text is not what was meant
                        '5,"a note, quoted",d\n'
                        "6,the last note,e\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    done = aigc("prepare", "text", f"data.paths=[{csv_file}]", f"run.dir={run_dir}", "data.column=body",
                "data.val_fraction=0")
    assert done.returncode == 0, done.stderr
    assert sorted(_documents(run_dir)) == ["a note, quoted", "the first note", "the last note"]
    dropped = _dropped(run_dir)
    assert dropped.get("missing_field") == 1 and dropped.get("empty") == 1
    assert sum(dropped.values()) == 3, f"the row with an extra column is not counted: {dropped}"


def test_text_column_of_a_tsv_keeps_quotes_as_text(tmp_path):
    """A TSV has no quoting: a text that starts with a quote is text, and an unclosed one does not swallow rows."""
    tsv = tmp_path / "lines.tsv"
    tsv.write_text('id\ttext\n1\t"Run!" she cried.\n2\tplain line\n3\t"an unclosed quote\n4\tafter the quote\n'
                   "5\n6\t\n7\tthe last line\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    done = aigc("prepare", "text", f"data.paths=[{tsv}]", f"run.dir={run_dir}", "data.val_fraction=0")
    assert done.returncode == 0, done.stderr
    assert sorted(_documents(run_dir)) == sorted(['"Run!" she cried.', "plain line", '"an unclosed quote',
                                                  "after the quote", "the last line"])
    assert _dropped(run_dir) == {"missing_field": 1, "empty": 1}


# --- collect and eval on their own -------------------------------------------------------------------------------

def test_collect_on_its_own(tmp_path):
    folder = tmp_path / "notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one\n\ntwo\n\nthree\n", encoding="utf-8")
    (folder / "sub" / "b.md").write_text("four\n\n\n\nfive\n", encoding="utf-8")
    (folder / "blob.bin").write_bytes(b"\x00\x01binary" * 10)
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "c.txt").write_text("never read\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    done = aigc("collect", "text", f"data.paths=[{folder}]", f"run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    assert "collected 5 records from 3 files" in done.stdout and "binary" in done.stdout
    sources = json.loads((run_dir / "data" / "sources.json").read_text())
    assert {Path(f["path"]).name: f["records"] for f in sources["files"]} == {"a.txt": 3, "b.md": 2, "blob.bin": 0}
    assert sources["unreadable"]["binary"]["documents"] == 1
    assert sorted(p.name for p in (run_dir / "data").iterdir()) == ["sources.json"]  # collect prepares nothing
    gone = aigc("collect", "text", f"data.paths=[{tmp_path / 'nothing'}]", f"run.dir={run_dir}")
    assert gone.returncode == 2 and gone.stderr.startswith("error: no such file") and "Traceback" not in gone.stderr


def test_eval_on_its_own(text_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(text_run, run_dir, symlinks=True)
    from_the_pipeline = json.loads((run_dir / "eval" / "report.json").read_text())
    shutil.rmtree(run_dir / "eval")
    done = aigc("eval", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "perplexity" in done.stdout and f"report: {run_dir / 'eval' / 'report.md'}" in done.stdout
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["step"] == load_checkpoint(run_dir / "checkpoints" / "best").meta["step"]
    assert report["loss"] == pytest.approx(from_the_pipeline["loss"], rel=1e-6)  # the same scoring as `aigc run`
    assert len(report["samples"]) == 2  # the run's own eval settings
    assert (run_dir / "eval" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "perplexity" in (run_dir / "eval" / "report.md").read_text()

    shutil.rmtree(run_dir / "eval")
    shutil.rmtree(run_dir / "data")
    missing = aigc("eval", str(run_dir))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.startswith("error: no prepared data") and "aigc prepare" in missing.stderr
    assert not (run_dir / "eval" / "report.json").exists()
    not_a_run = aigc("eval", str(tmp_path))
    assert not_a_run.returncode == 2 and "Traceback" not in not_a_run.stderr and "error:" in not_a_run.stderr


def test_eval_with_int8_weights_reports_the_perplexity_change(text_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(text_run, run_dir, symlinks=True)
    done = aigc("eval", str(run_dir), "--quantize", "int8", "eval.samples=0")
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    change = report["quantization"]["perplexity_change_percent"]
    assert abs(change) < 2, f"int8 changed the perplexity by {change:+.2f}%"
    assert report["quantization"]["loss_stored_weights"] == pytest.approx(
        json.loads((text_run / "eval" / "report.json").read_text())["loss"], rel=1e-6)
    assert "| quantization | int8 weights: perplexity" in (run_dir / "eval" / "report.md").read_text()
    generated = aigc("generate", str(run_dir), "--quantize", "int8", "--prompt", "ROMEO:", "--seed", "1")
    assert generated.returncode == 0 and generated.stdout.strip(), generated.stderr
    wrong = aigc("generate", str(run_dir), "--quantize", "int4", "--prompt", "x")
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


def test_eval_on_other_files_leaves_the_runs_data_alone(text_run, tmp_path, notes):
    run_dir = tmp_path / "run"
    shutil.copytree(text_run, run_dir, symlinks=True)
    manifest = (run_dir / "data" / "manifest.json").read_bytes()
    own_report = (run_dir / "eval" / "report.json").read_bytes()
    done = aigc("eval", str(run_dir), f"data.paths=[{notes}]", "eval.samples=0")
    assert done.returncode == 0, done.stderr
    assert (run_dir / "eval" / "report.json").read_bytes() == own_report  # the run's own report is kept
    report = json.loads((run_dir / "eval" / "files" / "report.json").read_text())
    assert f"report: {run_dir / 'eval' / 'files' / 'report.md'}" in done.stdout
    assert sorted(Path(f).name for f in report["data"]) == sorted(p.name for p in notes.rglob("*.txt"))
    assert 0 < report["tokens_scored"] < 200 and report["loss"] > 0
    assert (run_dir / "data" / "manifest.json").read_bytes() == manifest
    kind = aigc("eval", str(run_dir), f"data.paths=[{notes}]", "data.kind=pairs")
    assert kind.returncode == 2 and "data.kind" in kind.stderr and "Traceback" not in kind.stderr
    unnamed = aigc("eval", str(run_dir), "data.document=line")
    assert unnamed.returncode == 2 and "data.paths=" in unnamed.stderr and "Traceback" not in unnamed.stderr
    missing = aigc("eval", str(run_dir), f"data.paths=[{tmp_path / 'nowhere'}]")
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
    assert (run_dir / "data" / "manifest.json").read_bytes() == manifest


# --- data.val_paths ----------------------------------------------------------------------------------------------

@pytest.fixture
def notes(tmp_path) -> Path:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha one\n\nalpha two\n\nalpha three\n", encoding="utf-8")
    (folder / "b.txt").write_text("beta one\n\nbeta two\n", encoding="utf-8")
    (folder / "held.txt").write_text("held out one\n\nheld out two\n", encoding="utf-8")
    return folder


TRAIN_DOCS = ["alpha one", "alpha three", "alpha two", "beta one", "beta two"]


def test_val_paths_are_the_val_split(tmp_path, notes):
    run_dir = tmp_path / "run"
    done = aigc("prepare", "text", f"data.paths=[{notes / 'a.txt'},{notes / 'b.txt'}]",
                f"data.val_paths=[{notes / 'held.txt'}]", "data.val_fraction=0.5", f"run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    assert _documents(run_dir, ["val"]) == ["held out one", "held out two"]
    assert sorted(_documents(run_dir, ["train"])) == TRAIN_DOCS  # val_fraction is unused: nothing else moved to val


def test_val_paths_inside_a_data_folder_are_still_the_val_split(tmp_path, notes):
    """data.paths=[notes/] data.val_paths=[notes/held.txt]: the held-out file is val, not also train."""
    run_dir = tmp_path / "run"
    done = aigc("prepare", "text", f"data.paths=[{notes}]", f"data.val_paths=[{notes / 'held.txt'}]",
                f"run.dir={run_dir}")
    assert done.returncode == 0, done.stderr
    assert _documents(run_dir, ["val"]) == ["held out one", "held out two"]
    assert sorted(_documents(run_dir, ["train"])) == TRAIN_DOCS


# --- aigc run resumes an interrupted training --------------------------------------------------------------------

def test_run_resumes_an_interrupted_training(tmp_path, corpus):
    run_dir = tmp_path / "run"
    args = ["run", "text", f"data.paths=[{corpus}]", f"run.dir={run_dir}", *TINY, "train.max_steps=100",
            "train.log_every=1", "train.eval_every=50", "train.checkpoint_every=1000"]
    process = subprocess.Popen([sys.executable, "-m", "aigc", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 180
    while not (metrics.is_file() and metrics.read_text().count('"loss"') >= 5):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "training never logged 5 steps"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out
    stopped_at = load_checkpoint(run_dir).meta["step"]
    assert 5 <= stopped_at < 100
    stages = json.loads((run_dir / "stages.json").read_text())
    assert set(stages) == {"collect", "prepare"}  # the interrupted training is not recorded as done
    before = metrics.read_text().splitlines()

    again = aigc(*args)
    assert again.returncode == 0, again.stderr
    assert f"(step {stopped_at})" in again.stderr and "resumed from" in again.stderr, again.stderr[-3000:]
    assert "ran:     train, eval" in again.stdout and "skipped: collect, prepare" in again.stdout
    assert "trained 100 steps" in again.stdout
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 101))  # continued from the checkpoint: no step twice, none lost
    assert metrics.read_text().splitlines()[: len(before)] == before
    assert load_checkpoint(run_dir).meta["step"] == 100
    assert set(json.loads((run_dir / "stages.json").read_text())) == {"collect", "prepare", "train", "eval"}
    assert (run_dir / "eval" / "report.json").is_file() and not list(run_dir.glob("checkpoints-before-*"))
    third = aigc(*args)
    assert third.returncode == 0 and "skipped: collect, prepare, train, eval" in third.stdout


# --- the shapes recipe -------------------------------------------------------------------------------------------

def test_shapes_recipe_end_to_end(tmp_path):
    run_dir = tmp_path / "shapes"
    done = aigc("run", "shapes", f"run.dir={run_dir}", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                "train.max_steps=10", "train.max_minutes=null", "train.schedule=steps", "train.batch_size=8",
                "train.eval_every=10", "train.checkpoint_every=10", "train.eval_batches=2", "train.threads=2",
                "eval.samples_per_prompt=2")
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    for key in ("adherence", "adherence_seen", "adherence_heldout"):
        assert isinstance(report[key], float) and 0.0 <= report[key] <= 1.0, (key, report[key])
    parts = sorted([report["adherence_seen"], report["adherence_heldout"]])  # over every prompt: between the two
    assert parts[0] <= report["adherence"] <= parts[1], report
    assert "held-out combinations" in done.stdout
    seen = report["prompts_seen"]
    prompts = [s["prompt"] for s in report["samples"]]
    assert seen >= 1 and len(prompts) > seen + 1
    assert not any(shapes.held_out(shapes.parse(p)) for p in prompts[:seen])
    assert all(shapes.held_out(shapes.parse(p)) for p in prompts[seen:-1])  # then the held-out ones, then a novel one
    assert shapes.parse(prompts[-1]) is None
    for sample in report["samples"]:
        with Image.open(run_dir / "eval" / sample["grid"]) as png:
            assert png.format == "PNG" and png.size[0] >= 2 * 16
    assert len(list((run_dir / "eval" / "samples").glob("*.png"))) == len(prompts)
    # held out means never in training: no training caption names a held-out colour and kind
    manifest = read_manifest(run_dir / "data")
    tokenizer = Tokenizer.from_file(str(run_dir / "tokenizer.json"))
    captions = [tokenizer.decode(s[:-1].tolist()) for s, _ in split_pairs(run_dir / "data", manifest, "train")]
    assert captions and not any(shapes.held_out(shapes.parse(c)) for c in captions)


def test_generate_constrained_by_a_choice_a_regex_a_schema_or_a_grammar(text_run, tiny_runs, tmp_path):
    """The character run cannot write JSON objects or strings ('{' and '"' are not in its vocabulary): it says so;
    a schema of a boolean it can write."""
    base = ["generate", text_run, "--prompt", "ROMEO:", "--n", "3", "--seed", "4", "--temperature", "1.0"]
    choices = aigc(*base, "--choice", "yes", "no", "thou art")
    assert choices.returncode == 0 and set(choices.stdout.strip().split("\n\n")) <= {"yes", "no", "thou art"}
    names = aigc(*base, "--regex", "[A-Z]{3,5}")
    assert names.returncode == 0 and all(len(n) in (3, 4, 5) and n.isupper() for n in names.stdout.strip().split("\n\n"))
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "boolean"}))
    decided = aigc(*base, "--json-schema", schema)
    assert decided.returncode == 0 and set(decided.stdout.strip().split("\n\n")) <= {"true", "false"}, decided
    schema.write_text(json.dumps({"type": "object"}))
    unwritable = aigc(*base, "--json-schema", schema)
    assert unwritable.returncode == 0 and "3 of 3 samples stopped where the grammar needs text" in unwritable.stderr
    lark = tmp_path / "words.lark"
    lark.write_text('start: WORD (" " WORD)*\nWORD: /[a-z]{2,4}/\n')
    assert aigc(*base, "--grammar", lark, "--max-new-tokens", "12").returncode == 0
    for args, message in [(["--regex", "(unclosed"], "the regex cannot be used"),
                          (["--json-schema", tmp_path / "missing.json"], "cannot read"),
                          (["--choice", "a", "--regex", "b"], "not allowed with argument")]:
        refused = aigc(*base, *args)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr, refused
    other = aigc("generate", tiny_runs["translate"], "--prompt", "Hi.", "--choice", "a")
    assert other.returncode != 0 and "constrain text runs" in other.stderr
