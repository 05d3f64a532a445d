"""Preference tuning end to end on a small model of our own: the answer mask, learning to prefer, exact resume, two
processes, evaluation, and bad rows counted by reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aigc import prepare
from aigc.checkpoint import point
from aigc.config import load_config
from aigc.data.shards import open_split, read_manifest
from aigc.errors import DataError, TrainingError
from aigc.tokenizer import load_tokenizer
from aigc.training.loop import train
from tests.conftest import fixture
from tests.e2e.helpers import aigc, torchrun

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=48", "model.block_size=128", "train.batch_size=8",
        "train.warmup_steps=5", "train.eval_batches=4", "train.threads=2", "train.max_minutes=null",
        "train.schedule=steps", "train.log_every=1", "train.device=cpu", "model.dropout=0"]
WORDS = ["king", "queen", "lord", "love", "night", "sweet", "death", "heart", "sword", "crown", "blood", "honour"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A small character-level model of our own, trained here: what preference tuning starts from."""
    root = tmp_path_factory.mktemp("preference")
    corpus = root / "shakespeare.txt"
    corpus.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    config = load_config("text", [f"run.dir={root / 'base'}", f"data.paths=[{corpus}]", *TINY, "train.max_steps=100",
                                  "train.lr=3e-3", "train.eval_every=100"])
    prepare(config)
    train(config, log=lambda line: None)
    return root / "base"


def _pairs(path: Path, count: int = 300, bad: bool = True) -> Path:
    """Pairs with a preference to learn (repeat the word asked for, not another), half as text and half as
    messages; with ``bad``, rows that cannot be used, one per reason."""
    rng = np.random.default_rng(0)
    rows: list = []
    for i in range(count):
        a, b = rng.choice(WORDS, 2, replace=False)
        if i % 2:
            rows.append({"prompt": f"Say {a}: ", "chosen": f"{a} {a}.", "rejected": f"{b} {b}."})
        else:
            rows.append({"prompt": [{"role": "user", "content": f"Say {a}."}],
                         "chosen": [{"role": "assistant", "content": f"{a} {a}."}],
                         "rejected": [{"role": "assistant", "content": f"{b} {b}."}]})
    if bad:
        rows += [{"prompt": "x", "chosen": "same", "rejected": "same"}, {"prompt": "x", "chosen": "y"}, [1, 2],
                 {"prompt": "x", "chosen": [{"role": "assistant", "content": "y"}], "rejected": "z"},
                 {"prompt": [{"role": "narrator", "content": "x"}], "chosen": [{"role": "assistant", "content": "y"}],
                  "rejected": [{"role": "assistant", "content": "z"}]},
                 {"prompt": "long " * 40, "chosen": "a", "rejected": "b"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    return path


def _config(base: Path, run_dir: Path, data: Path, *extra: str):
    return load_config("dpo", ["data.builtin=[]", f"data.paths=[{data}]", f"run.dir={run_dir}", f"model.init={base}",
                               *TINY, "train.lr=1e-3", "train.dpo.sft_weight=0", "train.eval_every=20",
                               "eval.task=text", "eval.samples=2",
                               "generate.max_new_tokens=8", *extra])


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tuned(base, tmp_path_factory) -> Path:
    """DPO (full fine-tuning against a frozen copy of the base) for 60 steps."""
    root = tmp_path_factory.mktemp("dpo")
    config = _config(base, root / "run", _pairs(root / "pairs.jsonl"), "train.max_steps=60")
    prepare(config)
    train(config, log=lambda line: None)
    return config.run_dir


def test_bad_rows_are_counted_by_reason_and_the_rest_prepared(tuned):
    manifest = read_manifest(tuned / "data")
    dropped = manifest["cleaning"]["dropped"]
    for reason in ("identical_answers", "missing_field", "malformed_row", "mixed_forms", "unknown_role", "too_long",
                   "bad_json"):
        assert dropped[reason]["documents"] == 1, (reason, dropped)
    assert sum(manifest["preference"]["pairs"].values()) == 300


def test_the_loss_mask_covers_the_answer_alone(tuned):
    """Hand-computed: a text pair's mask starts where the prompt's characters end (char tokenizer); a conversational
    pair's covers what the assistant's turn adds to aigc's template ("User: ...\\nAssistant:" + " a a.\\n"), each
    with the end token."""
    data = tuned / "data"
    manifest = read_manifest(data)
    tokens, mask = open_split(data, "train", manifest), open_split(data, "train.mask", manifest)
    lengths = np.asarray(open_split(data, "train.lengths", manifest), dtype=np.int64)
    tokenizer = load_tokenizer(tuned / "tokenizer.json")
    eot = manifest["tokenizer"]["eot_id"]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    seen = set()
    for start, n in zip(starts, lengths):
        ids, learn = np.asarray(tokens[start : start + n]), np.asarray(mask[start : start + n]).astype(bool)
        text = tokenizer.decode(ids[:-1].tolist())
        assert ids[-1] == eot and learn[-1]
        answer = tokenizer.decode(ids[learn][:-1].tolist())
        if text.startswith("User: "):
            word = text.split("Say ", 1)[1].split(".", 1)[0]
            assert text == f"User: Say {word}.\nAssistant:{answer}" and answer.endswith(".\n"), (text, answer)
            seen.add("messages")
        else:
            prompt = text[: text.index(": ") + 2]
            assert answer == text[len(prompt):] and not learn[: len(prompt)].any(), (text, answer)
            seen.add("text")
    assert seen == {"messages", "text"}


def test_dpo_learns_the_preference_on_held_out_pairs(tuned):
    evaluations = [r for r in _records(tuned) if "val_loss" in r]
    first, last = evaluations[0], evaluations[-1]
    assert last["val_rewards/accuracies"] >= 0.75, last  # measured 0.84 (chance: 0.5)
    assert last["val_rewards/margins"] > first["val_rewards/margins"] > 0
    assert last["val_loss"] < 0.6 < np.log(2)  # DPO's loss starts at log 2 (the policy is its reference)
    done = aigc("eval", tuned)
    assert done.returncode == 0, done.stderr
    report = json.loads((tuned / "eval" / "report.json").read_text())
    assert report["reward_accuracy"] >= 0.75  # measured 0.89
    assert report["pairs_scored"] == read_manifest(tuned / "data")["preference"]["pairs"]["val"] > 20
    assert "reward accuracy" in done.stdout and report["before"]["distinct_1"] >= 0  # the starting model answered too


def test_orpo_and_lora_dpo_learn_too(base, tuned, tmp_path):
    """ORPO (no reference) and DPO with LoRA (the reference is the base with the adapters off) from the same data."""
    for name, settings in (("orpo", ["train.objective=orpo"]), ("lora", ["train.lora.rank=4", "train.lr=5e-3"])):
        config = _config(base, tmp_path / name, tuned.parent / "pairs.jsonl", "train.max_steps=40", *settings)
        config.run_dir.mkdir()
        for item in ("data", "tokenizer.json", "base"):
            (config.run_dir / item).symlink_to(tuned / item)
        train(config, log=lambda line: None)
        last = [r for r in _records(config.run_dir) if "val_loss" in r][-1]
        assert last["val_rewards/accuracies"] >= 0.6, (name, last)  # measured 0.88 (ORPO), 0.69 (LoRA)


def test_resume_is_exact_and_two_processes_match_one(base, tuned, tmp_path):
    common = ["train.max_steps=8", "train.checkpoint_every=4", "train.keep_checkpoints=5", "train.eval_every=4",
              "train.grad_accum=2", "train.threads=1"]

    def fresh(name: str):
        config = _config(base, tmp_path / name, tuned.parent / "pairs.jsonl", *common)
        config.run_dir.mkdir()
        for item in ("data", "tokenizer.json", "base"):
            (config.run_dir / item).symlink_to(tuned / item)
        return config

    straight = fresh("straight")
    train(straight, log=lambda line: None)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight.run_dir, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "step_000008")
    point(resumed / "checkpoints", "latest", "step_000004")
    train(_config(base, resumed, tuned.parent / "pairs.jsonl", *common), resume=True, log=lambda line: None)
    losses = {r["step"]: r["loss"] for r in _records(straight.run_dir) if "loss" in r}
    assert {r["step"]: r["loss"] for r in _records(resumed) if "loss" in r} == losses
    two = fresh("two")
    torchrun("train", "dpo", "data.builtin=[]", f"data.paths=[{tuned.parent / 'pairs.jsonl'}]", f"run.dir={two.run_dir}",
             f"model.init={base}", *TINY, "train.lr=1e-3", "train.dpo.sft_weight=0", *common)
    got = {r["step"]: r["loss"] for r in _records(two.run_dir) if "loss" in r}
    assert sorted(got) == sorted(losses)
    for step, loss in losses.items():
        assert got[step] == pytest.approx(loss, rel=1e-5), step


def test_unusable_preference_data_is_refused_clearly(base, tmp_path):
    rows = tmp_path / "bad.jsonl"
    rows.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="'prompt', 'chosen' and 'rejected'"):
        prepare(_config(base, tmp_path / "run", rows))
    no_init = load_config("dpo", ["data.builtin=[]", f"data.paths=[{_pairs(tmp_path / 'ok.jsonl', 10)}]",
                                  f"run.dir={tmp_path / 'no-init'}", "model.init=null"])
    with pytest.raises((DataError, TrainingError), match="model.init"):
        prepare(no_init)
