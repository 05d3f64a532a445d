"""Training modes beyond the default: bf16, torch.compile, the time budget and its resume, and DDP (torchrun)
resuming a one-process run and driving the pair (translation) and image (digits) samplers.

Every run is tiny and step-budgeted; the data comes from tests/fixtures or is made here.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy

from aigc import prepare
from aigc.checkpoint import load_checkpoint, point
from aigc.config import load_config
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.training.loop import train
from tests.e2e.helpers import aigc, torchrun

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.dropout=0.0",
        "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=5", "train.eval_every=20", "train.eval_batches=2",
        "train.log_every=1", "train.threads=2", "train.max_minutes=null", "train.schedule=steps"]
# Relative tolerance between runs that see the same batches but add the gradient sums in another order (two
# processes all-reducing against one accumulating): measured up to 1e-7 on these runs, so 1e-5 leaves room for
# other CPUs while a wrong batch (the first step's loss alone moves by ~1e-4) or a lost step still fails.
ACROSS_WORLD_SIZES = 1e-5


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text((FIXTURES / "tinyshakespeare_head.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


def _config(run_dir: Path, corpus: Path, *extra: str):
    return load_config("text", [f"run.dir={run_dir}", f"data.paths=[{corpus}]", *TINY, *extra])


def _prepared(run_dir: Path, corpus: Path, *extra: str):
    config = _config(run_dir, corpus, *extra)
    prepare(config)
    return config


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    """step -> value of ``key`` (``loss`` or ``val_loss``); fails on a step logged twice."""
    steps = [r["step"] for r in _records(run_dir) if key in r]
    assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {steps}"
    return {r["step"]: r[key] for r in _records(run_dir) if key in r}


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_numpy(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory, corpus):
    """The fp32, eager reference: 40 steps."""
    config = _prepared(tmp_path_factory.mktemp("eager") / "run", corpus, "train.max_steps=40")
    train(config)
    return config, _losses(config.run_dir)


def test_bf16_trains_and_its_checkpoint_generates(tmp_path, corpus, eager_run):
    config = _prepared(tmp_path / "bf16", corpus, "train.max_steps=40", "train.precision=bf16")
    result = train(config)
    losses, fp32 = _losses(config.run_dir), eager_run[1]
    assert sorted(losses) == list(range(1, 41)) and all(math.isfinite(v) for v in losses.values())
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(36, 41)])
    assert last < first - 0.5, f"bf16 loss fell only from {first:.3f} to {last:.3f} in 40 steps"
    assert result.best_val_loss is not None and math.isfinite(result.best_val_loss)
    # autocast is really on (the losses are not fp32's bit for bit) and tracks fp32: measured at most 0.05 apart
    gaps = [abs(losses[s] - fp32[s]) for s in losses]
    assert max(gaps) > 0, "bf16 gave fp32's losses bit for bit: autocast is not in effect"
    assert max(gaps) < 0.2, f"bf16 drifted {max(gaps):.3f} from fp32"
    checkpoint = load_checkpoint(config.run_dir)
    assert checkpoint.meta["step"] == 40 and checkpoint.config.train.precision == "bf16"
    assert all(w.dtype == np.float32 for w in _weights(config.run_dir).values())  # weights stay fp32
    generator = TextGenerator.from_checkpoint(config.run_dir)
    params = SamplingParams(max_new_tokens=20, temperature=0.8, top_k=20, seed=5, ignore_eos=True)
    once, again = generator.complete(["ROMEO:"], params)[0], generator.complete(["ROMEO:"], params)[0]
    assert len(once.token_ids) == 20 and once.finish_reason == "length" and once.text.strip()
    assert once.text == again.text


@pytest.mark.slow
def test_compile_gives_the_eager_losses(tmp_path, corpus, eager_run, monkeypatch):
    """torch.compile (inductor, C++ on the CPU) against eager on the same 6 steps.

    Steps 1-6 have the same learning rates whether max_steps is 6 or 40 (warm-up, then the top of the cosine).
    Inductor fuses and reorders the arithmetic, so the losses agree to rounding: measured 6e-8 relative;
    the bound of 1e-4 still fails on a wrong gradient or a skipped step (these move the loss by 1e-2).
    """
    from torch._dynamo.utils import counters

    compiled = []
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compiled.append(model) or real_compile(model, **kw))
    counters.clear()
    config = _prepared(tmp_path / "compiled", corpus, "train.max_steps=6", "train.compile=true")
    result = train(config)
    assert len(compiled) == 1 and counters["stats"]["unique_graphs"] >= 1, "train.compile=true did not compile"
    losses, eager = _losses(config.run_dir), eager_run[1]
    assert sorted(losses) == list(range(1, 7)) and result.steps == 6
    for step, loss in losses.items():
        assert loss == pytest.approx(eager[step], rel=1e-4), (step, loss, eager[step])
    assert losses[6] < losses[1] - 0.1  # and it learns
    assert load_checkpoint(config.run_dir).meta["step"] == 6


def _train_process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aigc", "train", "text", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_steps(run_dir: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    path = run_dir / "metrics.jsonl"
    while not (path.is_file() and sum('"loss"' in line for line in path.read_text().splitlines()) >= count):
        assert process.poll() is None, f"the run ended before step {count}: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"no step {count} in {path}"
        time.sleep(0.02)


def test_time_budget_stops_with_a_checkpoint_and_resume_spends_the_rest(tmp_path, corpus):
    """A 0.15-minute budget: Ctrl-C after two steps, --resume trains until the budget (counted across both
    processes) is spent, a second --resume trains nothing, and a larger budget continues from there."""
    run_dir = tmp_path / "timed"
    prepare(_config(run_dir, corpus))
    args = [f"run.dir={run_dir}", f"data.paths=[{corpus}]", *TINY, "train.max_steps=1000000", "train.warmup_steps=0",
            "train.max_minutes=0.15", "train.schedule=time", "train.checkpoint_every=1000000",
            "train.eval_every=1000000"]
    process = _train_process(args)
    _wait_for_steps(run_dir, 2, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    interrupted_at = load_checkpoint(run_dir).meta["step"]
    before = _records(run_dir)
    assert interrupted_at >= 2 and max(_losses(run_dir)) == interrupted_at

    resumed = aigc("train", "text", *args, "--resume")  # in this process: the elapsed time comes from the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    assert f"(step {interrupted_at})" in resumed.stderr and "resumed from" in resumed.stderr
    final = load_checkpoint(run_dir).meta["step"]
    assert f"time budget of 0.15 min reached at step {final}" in resumed.stderr
    assert final > interrupted_at and f"trained {final} steps" in resumed.stdout
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(1, final + 1))  # no step lost, none logged twice
    assert _records(run_dir)[: len(before)] == before  # the first process's lines are kept as they were
    elapsed = [r["elapsed_s"] for r in _records(run_dir) if "loss" in r]
    assert elapsed == sorted(elapsed), elapsed  # the clock carried over the resume: no restart from 0
    assert len(_losses(run_dir, "val_loss")) >= 1  # the budget ended between evaluations: one at the end
    lrs = [r["lr"] for r in _records(run_dir) if "lr" in r]
    assert lrs[-1] < 0.5 * 3e-3, f"the time schedule should end low, ended at {lrs[-1]}"

    spent = aigc("train", "text", *args, "--resume")
    assert spent.returncode == 0, spent.stderr
    assert f"time budget of 0.15 min reached at step {final}" in spent.stderr
    assert load_checkpoint(run_dir).meta["step"] == final and sorted(_losses(run_dir)) == list(range(1, final + 1))

    longer = [a if not a.startswith("train.max_minutes=") else "train.max_minutes=0.2" for a in args]
    more = aigc("train", "text", *longer, "--resume")
    assert more.returncode == 0, more.stderr
    latest = load_checkpoint(run_dir).meta["step"]
    assert latest > final and sorted(_losses(run_dir)) == list(range(1, latest + 1))


@pytest.mark.slow
def test_resume_on_two_processes_continues_a_one_process_run(tmp_path, corpus):
    """1 process to step 4, then torchrun with 2 processes --resume to step 8, against 1 process straight to 8.

    Not bit for bit: the two processes' gradients are averaged by an all-reduce instead of accumulated in one
    process, so the sums round differently (see ACROSS_WORLD_SIZES). Without dropout nothing else differs.
    """
    common = ["train.max_steps=8", "train.grad_accum=2", "train.threads=1", "train.checkpoint_every=4",
              "train.keep_checkpoints=5", "train.eval_every=4"]
    straight = _prepared(tmp_path / "straight", corpus, *common)
    train(straight)
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(straight.run_dir, resumed_dir, symlinks=True)
    shutil.rmtree(resumed_dir / "checkpoints" / "step_000008")
    point(resumed_dir / "checkpoints", "latest", "step_000004")
    point(resumed_dir / "checkpoints", "best", "step_000004")
    done = torchrun("train", "text", f"run.dir={resumed_dir}", f"data.paths=[{corpus}]", *TINY, *common, "--resume")
    assert "(step 4)" in done.stderr and "no saved RNG state" in done.stderr  # rank 1 had no state of its own
    expected, got = _losses(straight.run_dir), _losses(resumed_dir)
    assert sorted(got) == list(range(1, 9))
    assert all(got[step] == expected[step] for step in range(1, 5))  # kept from the one-process run
    for step in range(5, 9):
        assert got[step] == pytest.approx(expected[step], rel=ACROSS_WORLD_SIZES), step
    assert got[8] < got[4]
    assert _losses(resumed_dir, "val_loss")[8] == pytest.approx(_losses(straight.run_dir, "val_loss")[8],
                                                                 rel=ACROSS_WORLD_SIZES)
    reference = _weights(straight.run_dir)
    for name, value in _weights(resumed_dir).items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-4, atol=1e-6, err_msg=name)
    state = torch.load(resumed_dir / "checkpoints" / "latest" / "train_state.pt", weights_only=True)
    assert state["step"] == 8 and len(state["rng"]) == 2  # every rank's RNG state is saved now


TINY_PAIRS = ["model.n_layer=1", "model.n_encoder_layer=1", "model.n_head=2", "model.n_embd=32", "model.dropout=0",
              "tokenizer.vocab_size=400"]
TINY_DIGITS = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.dropout=0"]
SAMPLER_STEPS = ["train.batch_size=8", "train.grad_accum=2", "train.max_steps=4", "train.max_minutes=null",
                 "train.schedule=steps", "train.warmup_steps=2", "train.log_every=1", "train.eval_every=4",
                 "train.eval_batches=2", "train.threads=1"]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    lines = (FIXTURES / "tatoeba_eng_cmn_slice.tsv").read_text(encoding="utf-8-sig").splitlines()
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    path.write_text("\n".join(lines[:1500]) + "\n", encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("recipe, settings", [
    ("translate", TINY_PAIRS),
    ("translate", [*TINY_PAIRS, "train.parallel=fsdp"]),  # the encoder-decoder sharded block by block
    ("digits", [*TINY_DIGITS, "train.condition_dropout=0"]),
    ("digits", TINY_DIGITS),  # the recipe's own condition_dropout (0.1): captions dropped per micro-batch
], ids=["pairs", "pairs-fsdp", "images", "images-condition-dropout"])
def test_two_processes_match_one_with_the_pair_and_image_samplers(tmp_path, pairs_file, recipe, settings):
    """The same global batch (2 micro-batches of 8) on 1 process and on 2: the same losses to rounding.

    Step 1's loss comes before any update, so it compares the batches themselves."""
    paths = [f"data.paths=[{pairs_file}]"] if recipe == "translate" else []
    one = load_config(recipe, [f"run.dir={tmp_path / 'one'}", *paths, *settings, *SAMPLER_STEPS])
    prepare(one)
    train(one)
    two_dir = tmp_path / "two"
    two_dir.mkdir()
    shutil.copytree(one.run_dir / "data", two_dir / "data")
    shutil.copy(one.run_dir / "tokenizer.json", two_dir / "tokenizer.json")
    done = torchrun("train", recipe, f"run.dir={two_dir}", *paths, *settings, *SAMPLER_STEPS)
    assert "2 process(es)" in done.stderr and "collected" not in done.stderr  # trained on the copied data
    for key in ("loss", "val_loss"):
        expected, got = _losses(one.run_dir, key), _losses(two_dir, key)
        assert sorted(got) == sorted(expected) and expected, key
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=ACROSS_WORLD_SIZES), (key, step, got, expected)
    assert _losses(one.run_dir)[4] < _losses(one.run_dir)[1]


def test_a_step_budget_inside_a_time_budget_still_ends_the_cosine(tmp_path, corpus):
    """train.max_steps=12 on a time schedule with minutes to spare: the learning rate reaches min_lr at step 12
    (before, the cosine followed only the clock and the run stopped at a high learning rate)."""
    run_dir = tmp_path / "steps-in-time"
    done = aigc("train", "text", f"run.dir={run_dir}", f"data.paths=[{corpus}]", *TINY, "train.max_steps=12",
                "train.warmup_steps=2", "train.max_minutes=30", "train.schedule=time", "train.lr=0.003",
                "train.min_lr=0.0003")
    assert done.returncode == 0, done.stderr
    lrs = [r["lr"] for r in _records(run_dir) if "lr" in r]
    last_step = max(r["step"] for r in _records(run_dir) if "lr" in r)
    expected = 3e-4 + 0.5 * (1 + math.cos(math.pi * (last_step - 1 - 2) / 10)) * 2.7e-3  # the step's progress
    assert last_step == 12 and lrs[-1] == pytest.approx(expected, rel=1e-3), lrs
    assert lrs[-1] < 4e-4, lrs  # the clock alone (12 steps of 30 minutes) would have kept it near 3e-3
