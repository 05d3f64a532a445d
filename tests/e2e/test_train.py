"""The train stage end to end on a slice of tinyshakespeare: learning, exact resume, signals, bad input."""

from __future__ import annotations

import json
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
from aigc.errors import CheckpointError, TrainingError
from aigc.files import file_hash
from aigc.models import GPT
from aigc.training import loop
from aigc.training.loop import train
from tests.conftest import fixture
from tests.e2e.helpers import torchrun

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=8",
        "train.lr=3e-3", "train.warmup_steps=5", "train.eval_every=8", "train.eval_batches=2", "train.log_every=1",
        "train.threads=2", "model.dropout=0.1", "train.schedule=steps"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    text = fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(text, encoding="utf-8")
    return path


def _config(run_dir: Path, corpus: Path, *extra: str):
    return load_config("text", [f"run.dir={run_dir}", f"data.paths=[{corpus}]", *TINY, *extra])


def _prepared(tmp_path: Path, corpus: Path, name: str, *extra: str):
    config = _config(tmp_path / name, corpus, *extra)
    prepare(config)
    return config


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_numpy(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))


def test_loss_decreases_quickly(tmp_path, corpus):
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=100", "model.dropout=0.0", "model.n_layer=4",
                       "model.n_head=4", "model.n_embd=128", "model.block_size=64", "train.batch_size=12",
                       "train.eval_every=50")
    result = train(config)
    losses = _losses(config.run_dir)
    assert losses[1] > 3.5 and losses[100] < 2.6, (losses[1], losses[100])
    assert result.best_val_loss is not None and result.best_val_loss < 2.8, result.best_val_loss
    files = {p.name for p in result.checkpoint.iterdir()}
    assert files == {"config.json", "model.safetensors", "tokenizer.json", "train_state.pt", "meta.json"}
    meta = json.loads((result.checkpoint / "meta.json").read_text())
    assert meta["step"] == 100 and len(meta["tokenizer_sha256"]) == 64 and meta["format"] == 1
    assert (config.run_dir / "checkpoints" / "best").is_symlink()


def test_exact_resume_matches_uninterrupted(tmp_path, corpus):
    common = ("train.max_steps=24", "train.checkpoint_every=8", "train.keep_checkpoints=3")
    straight = _prepared(tmp_path, corpus, "straight", *common)
    train(straight)
    resumed = _prepared(tmp_path, corpus, "resumed", *common)
    train(resumed)
    # pretend the process died after step 8's checkpoint: later checkpoints never happened
    root = resumed.run_dir / "checkpoints"
    for name in ("step_000016", "step_000024"):
        for file in (root / name).iterdir():
            file.unlink()
        (root / name).rmdir()
    point(root, "latest", "step_000008")
    train(resumed, resume=True)
    expected, got = _losses(straight.run_dir), _losses(resumed.run_dir)
    assert sorted(got) == list(range(1, 25))
    assert all(got[step] == expected[step] for step in range(9, 25))
    for name, value in _weights(straight.run_dir).items():
        assert np.array_equal(value, _weights(resumed.run_dir)[name]), name


def test_checkpoint_with_one_rng_state_still_resumes_exactly(tmp_path, corpus):
    """Checkpoints written before per-process RNG states hold one state (rank 0's), not a list: they still resume."""
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=12", "train.checkpoint_every=6",
                       "train.keep_checkpoints=5")
    train(config)
    expected, weights = _losses(config.run_dir), _weights(config.run_dir)
    root = config.run_dir / "checkpoints"
    for folder in root.glob("step_*"):
        if int(folder.name.split("_")[-1]) > 6:
            shutil.rmtree(folder)
    point(root, "latest", "step_000006")
    state_path = root / "step_000006" / "train_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["rng"] = state["rng"][0]  # the old format
    torch.save(state, state_path)
    meta = json.loads((root / "step_000006" / "meta.json").read_text())
    meta["files"]["train_state.pt"] = file_hash(state_path)
    (root / "step_000006" / "meta.json").write_text(json.dumps(meta))
    train(config, resume=True)
    assert _losses(config.run_dir) == expected
    for name, value in _weights(config.run_dir).items():
        assert np.array_equal(value, weights[name]), name


def _train_process(config_args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aigc", "train", "text", *config_args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for_step(run_dir: Path, step: int, timeout: float = 60) -> None:
    """Until the run's latest checkpoint is at ``step`` or later (older ones are pruned as it goes)."""
    deadline = time.monotonic() + timeout
    latest = run_dir / "checkpoints" / "latest"
    while not (latest.exists() and int(latest.resolve().name.split("_")[-1]) >= step):
        assert time.monotonic() < deadline, f"no checkpoint at step {step} or later in {run_dir}"
        time.sleep(0.02)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_then_resume_gives_same_final_weights(tmp_path, corpus):
    """Every run in a fresh process, as a user would: straight through; killed with SIGKILL, then --resume."""
    common = ["train.max_steps=60", "train.checkpoint_every=5", "train.eval_every=20"]
    straight = _prepared(tmp_path, corpus, "straight", *common)
    killed = _prepared(tmp_path, corpus, "killed", *common)

    def args(config):
        return [f"run.dir={config.run_dir}", f"data.paths=[{corpus}]", *TINY, *common]

    assert _train_process(args(straight)).wait() == 0
    process = _train_process(args(killed))
    _wait_for_step(killed.run_dir, 10)
    time.sleep(np.random.default_rng(0).uniform(0, 0.5))  # somewhere between two checkpoints
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = _train_process([*args(killed), "--resume"])
    out, err = resumed.communicate()
    assert resumed.returncode == 0 and "resumed from" in err, err
    reference = _weights(straight.run_dir)
    for name, value in _weights(killed.run_dir).items():
        assert np.array_equal(value, reference[name]), name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_saves_checkpoint_and_exits_cleanly(tmp_path, corpus, signum):
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=100000", "train.checkpoint_every=10000")
    args = [f"run.dir={config.run_dir}", f"data.paths=[{corpus}]", *TINY, "train.max_steps=100000",
            "train.checkpoint_every=10000"]
    process = _train_process(args)
    _wait_for(config.run_dir / "metrics.jsonl")
    time.sleep(1.0)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "--resume" in out
    checkpoint = load_checkpoint(config.run_dir)
    assert checkpoint.meta["step"] == max(_losses(config.run_dir))


def test_nan_loss_stops_with_last_good_state(tmp_path, corpus, monkeypatch):
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=20")

    class Diverging(GPT):
        calls = 0

        def forward(self, idx, targets=None, **kwargs):
            Diverging.calls += 1
            out = super().forward(idx, targets, **kwargs)
            return out * float("nan") if Diverging.calls > 5 and self.training else out

    monkeypatch.setattr(loop, "build_model", Diverging)
    with pytest.raises(TrainingError, match=r"loss became nan at step 6.*last good state is saved.*step_000005"):
        train(config)
    assert load_checkpoint(config.run_dir).meta["step"] == 5


def test_out_of_memory_is_explained(tmp_path, corpus, monkeypatch):
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=5")

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(GPT, "forward", no_memory)
    with pytest.raises(TrainingError, match=r"does not fit in memory.*train\.batch_size \(now 8\)"):
        train(config)


def test_corrupt_checkpoint_detected_and_skipped_on_resume(tmp_path, corpus):
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=10", "train.checkpoint_every=5",
                       "train.keep_checkpoints=2", "train.eval_every=1000")
    train(config)
    weights = config.run_dir / "checkpoints" / "step_000010" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step_000010/model\.safetensors is corrupt"):
        load_checkpoint(config.run_dir)
    state = config.run_dir / "checkpoints" / "step_000005" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"step_000005/train_state\.pt is corrupt"):
        load_checkpoint(state.parent)
    warnings = []
    result = train(config, resume=True, log=warnings.append)
    assert any("skipping step_000010" in w for w in warnings)
    assert any("skipping step_000005" in w for w in warnings)
    assert any("starting from step 0" in w for w in warnings)
    assert result.steps == 10


def test_checkpoint_weights_load_with_safetensors_alone(tmp_path, corpus):
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=2")
    train(config)
    weights = _weights(config.run_dir)
    vocab = json.loads((config.run_dir / "data" / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert weights["wte.weight"].shape == (vocab, 32) and "lm_head.weight" not in weights  # tied: stored once
    state = torch.load(config.run_dir / "checkpoints" / "latest" / "train_state.pt", weights_only=True)
    assert state["step"] == 2 and "optimizer" in state


def test_mismatched_tokenizer_and_model_are_refused(tmp_path, corpus):
    config = _prepared(tmp_path, corpus, "run", "train.max_steps=2")
    train(config)
    with pytest.raises(TrainingError, match="different settings"):
        train(_config(config.run_dir, corpus, "train.max_steps=4", "model.n_layer=3"), resume=True)
    tokenizer = config.run_dir / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"a"', '"a" '))
    with pytest.raises(TrainingError, match="different tokenizer"):
        train(config)


def test_block_size_beyond_data_is_refused(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("a short text\n\nand another one\n")
    config = _prepared(tmp_path, corpus, "run", "model.block_size=64")
    with pytest.raises(TrainingError, match="too few for windows of model.block_size=64"):
        train(config)


def _torchrun(config, corpus: Path, *extra: str) -> None:
    """``aigc train`` on two CPU processes under torchrun."""
    torchrun("train", "text", f"run.dir={config.run_dir}", f"data.paths=[{corpus}]", *TINY, *extra)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, corpus):
    """Across world sizes runs agree to float rounding (the reduction order differs), not bit for bit.

    Steps 1-6 use the same learning rates whether max_steps is 6 or 8 (warm-up, then the top of the cosine),
    so a 6-step run resumed to 8 continues an 8-step run exactly.
    """
    common = ["train.grad_accum=2", "model.dropout=0.0", "train.threads=1"]
    reference = _prepared(tmp_path, corpus, "reference", *common, "train.max_steps=8")
    train(reference)
    expected = _losses(reference.run_dir)
    single = _prepared(tmp_path, corpus, "single", *common, "train.max_steps=6")
    train(single)
    double = _prepared(tmp_path, corpus, "double", *common, "train.max_steps=6")
    _torchrun(double, corpus, *common, "train.max_steps=6")
    two = _losses(double.run_dir)
    assert sorted(two) == list(range(1, 7))
    for step in two:
        assert two[step] == pytest.approx(expected[step], rel=1e-5)
    # 1 -> 1 process: exact; 2 -> 1 processes: the same run to float rounding
    train(_config(single.run_dir, corpus, *common, "train.max_steps=8"), resume=True)
    assert _losses(single.run_dir) == expected
    for name, value in _weights(reference.run_dir).items():
        assert np.array_equal(value, _weights(single.run_dir)[name]), name
    train(_config(double.run_dir, corpus, *common, "train.max_steps=8"), resume=True)
    resumed = _losses(double.run_dir)
    assert sorted(resumed) == list(range(1, 9))
    for step in resumed:
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5)


@pytest.mark.slow
def test_torchrun_resume_continues_each_ranks_dropout(tmp_path, corpus):
    """With dropout, a 2-process run resumed on 2 processes matches the uninterrupted one bit for bit.

    Each rank draws its own dropout masks, so each must get its own RNG state back (not rank 0's).
    """
    common = ["train.max_steps=6", "train.grad_accum=2", "model.dropout=0.1", "train.threads=1",
              "train.checkpoint_every=3", "train.keep_checkpoints=5", "train.eval_every=3"]
    straight = _prepared(tmp_path, corpus, "straight", *common)
    _torchrun(straight, corpus, *common)
    state = torch.load(straight.run_dir / "checkpoints" / "step_000003" / "train_state.pt", weights_only=True)
    (rank0, rank1) = state["rng"]
    assert not torch.equal(rank0["torch"], rank1["torch"])
    # the same run, killed after step 3's checkpoint
    resumed = _config(tmp_path / "resumed", corpus, *common)
    shutil.copytree(straight.run_dir, resumed.run_dir, symlinks=True)
    shutil.rmtree(resumed.run_dir / "checkpoints" / "step_000006")
    point(resumed.run_dir / "checkpoints", "latest", "step_000003")
    point(resumed.run_dir / "checkpoints", "best", "step_000003")
    _torchrun(resumed, corpus, *common, "--resume")
    expected, got = _losses(straight.run_dir), _losses(resumed.run_dir)
    assert sorted(got) == list(range(1, 7))
    assert all(got[step] == expected[step] for step in range(4, 7))
    for name, value in _weights(straight.run_dir).items():
        assert np.array_equal(value, _weights(resumed.run_dir)[name]), name
