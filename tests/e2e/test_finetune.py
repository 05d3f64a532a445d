"""Fine-tuning end to end, as a user runs it: model.init, LoRA, SFT on conversations, adapters served, bad input."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import load_file

from aigc import prepare
from aigc.checkpoint import load_checkpoint
from aigc.config import load_config
from aigc.data.shards import read_manifest
from aigc.data.split import assign_split
from aigc.errors import TrainingError
from aigc.tasks.chat.evaluation import evaluate_conversations
from aigc.files import file_hash
from aigc.serve.server import load_models
from aigc.tasks import load_generator
from aigc.training.loop import train
from tests.conftest import fixture
from tests.e2e.helpers import Server, aigc, torchrun

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=48", "model.block_size=256", "train.seq_len=96",
        "train.batch_size=8",
        "train.warmup_steps=5", "train.eval_batches=2", "train.threads=2", "train.max_minutes=null",
        "train.schedule=steps", "eval.max_tokens=4000"]
STEPS = ["train.eval_every=1000", "train.checkpoint_every=1000", "train.log_every=1"]


def _fails_cleanly(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small character-level text model of our own, trained here: what the fine-tunes start from."""
    root = tmp_path_factory.mktemp("finetune")
    corpus = root / "shakespeare.txt"
    corpus.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    config = load_config("text", [f"run.dir={root / 'base'}", f"data.paths=[{corpus}]", *TINY, "train.max_steps=150",
                                  "train.lr=3e-3", "train.eval_every=150"])
    prepare(config)
    train(config, log=lambda line: None)
    return root / "base"


def _chats(path: Path, count: int, seed: int) -> Path:
    """Conversations with a pattern to learn (join the two words asked for), half OpenAI, half Alpaca, plus rows
    that cannot be used. Identical rows share a split, so the pairs are drawn without repeats."""
    rng = np.random.default_rng(seed)
    words = ["king", "queen", "lord", "love", "night", "sweet", "death", "heart", "sword", "crown", "blood", "honour",
             "rose", "storm", "grace", "fool"]
    pairs = [(a, b) for a in words for b in words if a != b]
    rows = []
    for i, k in enumerate(rng.permutation(len(pairs))[:count]):
        a, b = pairs[k]
        if i % 2:
            rows.append({"messages": [{"role": "user", "content": f"Join {a} and {b}."},
                                      {"role": "assistant", "content": f"{a}-{b}."}]})
        else:
            rows.append({"instruction": f"Join {a} and {b}.", "output": f"{a}-{b}."})
    rows += [{"messages": [{"role": "narrator", "content": "x"}, {"role": "assistant", "content": "y"}]},
             {"messages": [{"role": "user", "content": "no answer"}]}, {"messages": "hello"},
             {"instruction": "long " * 200, "output": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_full_fine_tuning_starts_from_the_init_with_its_tokenizer(base, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[40_000:60_000], encoding="utf-8")
    run = tmp_path / "full"
    done = aigc("train", "text", f"data.paths=[{notes}]", f"run.dir={run}", f"model.init={base}", *TINY,
                "train.max_steps=20", "train.eval_every=10", "train.log_every=1", "train.lr=1e-3",
                "tokenizer.kind=bpe", "model.n_layer=7")  # the init's settings win over the recipe's
    assert done.returncode == 0, done.stderr
    assert (run / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()  # no new tokenizer
    config = json.loads((run / "checkpoints" / "latest" / "config.json").read_text())
    init = Path(config["model"]["init"])  # the base's checkpoint, linked into the run: pruning base cannot take it
    assert config["model"]["n_layer"] == 2 and init.parent.parent == (run / "base").resolve()
    assert json.loads((run / "base" / "source.json").read_text())["path"].startswith(str(base.resolve()))
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    base_last = [json.loads(line) for line in (base / "metrics.jsonl").read_text().splitlines()]
    base_loss = [r["loss"] for r in base_last if "loss" in r][-1]
    assert first < base_loss + 0.3, (first, base_loss)  # a fresh model would start near ln(vocab) ~ 4
    assert aigc("generate", run, "--prompt", "ROMEO:", "--seed", "1", "--max-new-tokens", "8").returncode == 0


def test_bad_fine_tuning_input_is_a_clear_error(base, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    common = [f"data.paths=[{corpus}]", *TINY, "train.max_steps=2"]
    _fails_cleanly(aigc("train", "text", *common, f"run.dir={tmp_path / 'a'}", f"model.init={tmp_path / 'nowhere'}"),
                   "model.init=", "no such run")
    _fails_cleanly(aigc("train", "text", *common, f"run.dir={tmp_path / 'b'}", f"model.init={base}",
                        "train.lora.rank=4", "train.lora.targets=[q_proj]"), "name no module", "c_attn, c_proj, c_fc")
    _fails_cleanly(aigc("train", "text", *common, f"run.dir={tmp_path / 'c'}", f"model.init={base}",
                        "train.lora.rank=4096"), "larger than")
    _fails_cleanly(aigc("train", "text", *common, f"run.dir={tmp_path / 'd'}", "train.lora.rank=0"), "at least 1")
    # data prepared with a tokenizer of its own, then trained with an init: refused, nothing overwritten
    run = tmp_path / "e"
    assert aigc("prepare", "text", *common, f"run.dir={run}", "tokenizer.kind=bpe", "tokenizer.vocab_size=300",
                "data.document=line").returncode == 0
    manifest = (run / "data" / "manifest.json").read_bytes()
    with pytest.raises(TrainingError, match="another tokenizer than model.init's"):
        train(load_config("text", [*common, f"run.dir={run}", f"model.init={base}", "data.document=line"]),
              log=lambda line: None)
    assert (run / "data" / "manifest.json").read_bytes() == manifest
    _fails_cleanly(aigc("train", "sft", f"run.dir={tmp_path / 'f'}", "model.init=null", "data.builtin=[]",
                        f"data.paths=[{corpus}]"), "set model.init")


def _lora_args(base: Path, corpus: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "text", f"data.paths=[{corpus}]", f"run.dir={run}", f"model.init={base}", *TINY, *STEPS,
            "train.lora.rank=4", "train.lora.alpha=8", "train.lora.dropout=0.1", "train.lr=5e-3", *extra]


@pytest.mark.slow
def test_lora_resumes_exactly_after_sigkill(base, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[40_000:70_000], encoding="utf-8")
    common = ["train.max_steps=40", "train.checkpoint_every=4"]
    assert aigc(*_lora_args(base, corpus, tmp_path / "straight", *common)).returncode == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "aigc", *_lora_args(base, corpus, killed, *common)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latest, deadline = killed / "checkpoints" / "latest", time.monotonic() + 120
    while not (latest.exists() and int(latest.resolve().name.split("_")[-1]) >= 8):
        assert time.monotonic() < deadline and process.poll() is None, "no LoRA checkpoint at step 8"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert int(latest.resolve().name.split("_")[-1]) < 40  # killed mid-run
    resumed = aigc(*_lora_args(base, corpus, killed, *common), "--resume")
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr
    name = "adapter_model.safetensors"
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "latest" / name))
    again = load_file(str(latest / name))
    assert straight.keys() == again.keys() and len(straight) == 2 * 2 * 4  # A and B, 4 modules, 2 layers
    for key, value in straight.items():
        assert np.array_equal(value, again[key]), key
    assert file_hash(base / "checkpoints" / "latest" / "model.safetensors") == json.loads(
        (base / "checkpoints" / "latest" / "meta.json").read_text())["files"]["model.safetensors"]  # base untouched


def test_sft_end_to_end_learns_the_held_out_assistant_turns(base, tmp_path):
    chats = _chats(tmp_path / "chats.jsonl", 240, seed=0)
    run = tmp_path / "sft"
    done = aigc("run", "sft", f"run.dir={run}", f"model.init={base}", "data.builtin=[]", f"data.paths=[{chats}]",
                "data.val_fraction=0.2", *TINY, *STEPS, "train.max_steps=60", "train.lr=3e-3", "train.batch_size=8",
                "train.eval_every=30", "eval.task=text", "eval.samples=4", "generate.max_new_tokens=12",
                "generate.temperature=0")
    assert done.returncode == 0, done.stderr
    assert "no_assistant_turn" in done.stdout and "unknown_role" in done.stdout and "too_long" in done.stdout
    report = json.loads((run / "eval" / "report.json").read_text())
    manifest = read_manifest(run / "data")
    settings = load_checkpoint(run).config  # the sft run's data and lengths, no samples
    before = evaluate_conversations(load_generator(base), run, manifest,
                                    settings.model_copy(update={"eval": settings.eval.model_copy(update={"samples": 0})}))
    assert report["scored"] == "held-out assistant tokens" and report["tokens_scored"] > 100
    assert report["loss"] < before["loss"] - 0.5, (report["loss"], before["loss"])  # measured: 2.8 -> 1.4
    answers = [s["answer"] for s in report["samples"]]
    assert len(answers) == 4 and all(s["reference"].count("-") == 1 for s in report["samples"])
    # the answers have learned the shape "word-word" (measured: 4 of 4, e.g. 'stort-stort' for 'heart-storm'),
    # which the base model, trained on plain text, never writes
    shaped = [a for a in answers if re.fullmatch(r"\s*[a-z]+-[a-z]+\.?\s*", a)]
    assert len(shaped) >= 3, answers
    chat = aigc("generate", run, "--prompt", "Join crown and rose.", "--temperature", "0", "--max-new-tokens", "12")
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr


def test_the_stdlib_functions_corpus_is_split_by_file(base, tmp_path):
    run = tmp_path / "functions"
    config = load_config("sft", [f"run.dir={run}", f"model.init={base}", "train.seq_len=256"])
    result = prepare(config)
    held_out = [json.loads(line) for line in (run / "data" / "val_conversations.jsonl").read_text().splitlines()]
    files = {row["source"].rsplit(":", 1)[0] for row in held_out}
    assert held_out and all(assign_split(f, config.seed, config.data.val_fraction) == "val" for f in files)
    first = held_out[0]["messages"]
    assert first[0]["content"].startswith("Write a Python function `") and first[1]["content"].startswith(("def", "@"))
    assert result.manifest["splits"]["train"]["documents"] > result.manifest["splits"]["val"]["documents"] > 0


def test_two_adapters_on_one_base_are_served_each_under_its_own_name(base, tmp_path):
    runs = []
    for name, line in (("sonnets", "my love is like a red red rose\n"), ("battles", "to arms, to arms, the foe!\n")):
        corpus = tmp_path / f"{name}.txt"
        corpus.write_text(line * 400, encoding="utf-8")
        done = aigc(*_lora_args(base, corpus, tmp_path / name, "train.max_steps=40", "train.lr=2e-2",
                                "train.lora.dropout=0", "data.document=file"))  # one line 400 times: one document
        assert done.returncode == 0, done.stderr
        runs.append(tmp_path / name)
    models = load_models(runs)
    weights = [m.generator.model.wte.weight for m in models]
    assert weights[0].data_ptr() == weights[1].data_ptr()  # one base in memory
    expected = {}
    for run in runs:
        out = aigc("generate", run, "--prompt", "t", "--temperature", "0", "--max-new-tokens", "20")
        expected[run.name] = out.stdout.rstrip("\n")
    assert expected["sonnets"] != expected["battles"], expected
    expected["poet"] = expected.pop("sonnets")  # served under a name of our choosing
    server = Server([f"poet={runs[0]}", runs[1]])
    try:
        for name, text in expected.items():
            reply = httpx.post(f"{server.url}/v1/completions", json={"model": name, "prompt": "t", "max_tokens": 20,
                                                                     "temperature": 0}, timeout=60).json()
            assert reply["model"] == name and reply["choices"][0]["text"] == text, (name, reply)
    finally:
        server.stop()


@pytest.mark.slow
def test_lora_under_torchrun_matches_one_process(base, tmp_path):
    """Two processes agree with one to float rounding, as pretraining does: with DDP over the adapters alone, and
    with FSDP sharding the frozen base and the adapters (the checkpoint keeps the adapters whole, in PEFT's file)."""
    corpus = tmp_path / "c.txt"
    corpus.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[40_000:70_000], encoding="utf-8")
    common = ["train.max_steps=6", "train.grad_accum=2", "train.lora.dropout=0", "train.threads=1"]
    assert aigc(*_lora_args(base, corpus, tmp_path / "one", *common)).returncode == 0
    for parallel in ("ddp", "fsdp"):
        torchrun(*_lora_args(base, corpus, tmp_path / parallel, *common, f"train.parallel={parallel}"))
    losses = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                     if "loss" in json.loads(line)] for name in ("one", "ddp", "fsdp")}
    assert len(losses["one"]) == 6
    adapters = {n: load_file(str(tmp_path / n / "checkpoints" / "latest" / "adapter_model.safetensors"))
                for n in ("one", "ddp", "fsdp")}
    for parallel in ("ddp", "fsdp"):
        assert losses[parallel] == pytest.approx(losses["one"], rel=1e-5), parallel
        assert adapters[parallel].keys() == adapters["one"].keys()
        for key, value in adapters["one"].items():
            assert np.allclose(value, adapters[parallel][key], atol=1e-5), (parallel, key)


def test_sft_on_a_hugging_face_folder_uses_its_template(tmp_path):
    """model.init a Hugging Face folder: imported once into <run>/base, its ChatML template renders the rows, the
    model learns the held-out turns, and the run's checkpoints carry the template on. (Full fine-tuning: a tiny
    random base's embeddings are too small for adapters alone to move its logits far; LoRA on Hugging Face
    models is checked against PEFT in tests/parity.)"""
    from tests.parity import tiny_hf

    tiny_hf.save_model(tmp_path / "Tiny-Qwen", "qwen2")
    chats = _chats(tmp_path / "chats.jsonl", 200, seed=1)
    run = tmp_path / "qwen-sft"
    args = ["run", "sft", f"run.dir={run}", f"model.init={tmp_path / 'Tiny-Qwen'}", "data.builtin=[]",
            f"data.paths=[{chats}]", "data.val_fraction=0.2", "train.max_minutes=null", "train.schedule=steps",
            "train.max_steps=40", "train.lr=1e-2", "train.warmup_steps=5", "train.batch_size=8", "train.eval_every=20",
            "train.threads=2", "eval.task=text", "eval.samples=2", "generate.max_new_tokens=8", "generate.temperature=0"]
    done = aigc(*args)
    assert done.returncode == 0, done.stderr
    assert (run / "base" / "checkpoints" / "latest" / "meta.json").is_file()  # imported once, reused by a rerun
    checkpoint = run / "checkpoints" / "latest"
    assert (checkpoint / "chat.json").read_bytes() == (run / "base" / "checkpoints" / "latest" / "chat.json").read_bytes()
    report = json.loads((run / "eval" / "report.json").read_text())
    settings = load_checkpoint(run).config
    base = evaluate_conversations(load_generator(run / "base"), run, read_manifest(run / "data"),
                                  settings.model_copy(update={"eval": settings.eval.model_copy(update={"samples": 0})}))
    assert report["loss"] < base["loss"] - 2.0, (report["loss"], base["loss"])  # measured: 5.8 -> 2.5
    again = aigc(*args)
    assert again.returncode == 0 and "skipped: collect, prepare, train, eval" in again.stdout, again.stdout
