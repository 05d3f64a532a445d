"""Training on several processes with sharded weights (train.parallel=fsdp): two launchers meeting through a c10d
rendezvous as two nodes do, resuming on another number of processes, a process killed mid-checkpoint, and the
decisions every process must take together (the time budget).

Across world sizes runs agree to float rounding, not bit for bit: two processes average their gradients with a
reduce-scatter where one process accumulates them, so the sums round differently (ACROSS_WORLD_SIZES). On the same
world size a resumed run is the uninterrupted one exactly: the shards hold the weights and AdamW's moments, and the
batch of a step depends only on (seed, step).
"""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from aigc import prepare
from aigc.checkpoint import SHARDS, load_checkpoint, point
from aigc.config import load_config
from aigc.errors import TrainingError
from aigc.training.loop import train
from tests.conftest import fixture
from tests.e2e.helpers import free_port, torchrun

ACROSS_WORLD_SIZES = 1e-5
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.batch_size=8",
        "train.lr=3e-3", "train.warmup_steps=5", "train.eval_every=4", "train.eval_batches=2", "train.log_every=1",
        "train.threads=1", "model.dropout=0", "train.schedule=steps", "train.max_minutes=null", "train.device=cpu",
        "train.grad_accum=2", "train.checkpoint_every=4", "train.keep_checkpoints=5", "train.parallel=fsdp"]
STEPS = ["train.max_steps=8"]

# Run by torchrun in place of `python -m aigc`: makes one process misbehave as AIGC_TEST_FAULT says, then runs aigc.
FAULTS = textwrap.dedent('''
    import os, signal, sys, time
    from aigc.cli import main
    from aigc.training import loop, parallel

    if os.environ["RANK"] == "1":
        fault = os.environ["AIGC_TEST_FAULT"]
        if fault == "fast-clock":  # this process's clock runs 100 times faster than rank 0's
            real, start = time.perf_counter, time.perf_counter()
            loop.time = type(sys)("fast_time")
            loop.time.perf_counter = lambda: start + 100 * (real() - start)
        elif fault == "kill-in-save":  # SIGKILL while the processes write the checkpoint of step 8
            save = parallel.Sharded.save_shards

            def dying(self, optimizer, folder):
                if folder.parent.name.endswith("step_000008"):
                    os.kill(os.getpid(), signal.SIGKILL)
                return save(self, optimizer, folder)

            parallel.Sharded.save_shards = dying
    sys.exit(main(sys.argv[1:]))
''')


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


def _args(run_dir: Path, corpus: Path, *extra: str) -> list[str]:
    return [f"run.dir={run_dir}", f"data.paths=[{corpus}]", *TINY, *extra]


def _records(run_dir: Path, key: str = "loss") -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r[key] for r in map(json.loads, lines) if key in r}


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors"))


def _copy_until(source: Path, target: Path, step: int) -> Path:
    """``source``'s run as it was when its checkpoint of ``step`` was the latest (later ones deleted)."""
    shutil.copytree(source, target, symlinks=True)
    for later in (target / "checkpoints").glob("step_*"):
        if int(later.name.removeprefix("step_")) > step:
            shutil.rmtree(later)
    for link in ("latest", "best"):
        point(target / "checkpoints", link, f"step_{step:06d}")
    return target


def _data_of(source: Path, run_dir: Path) -> Path:
    """A new run folder holding ``source``'s prepared data and tokenizer (no checkpoints)."""
    run_dir.mkdir(parents=True)
    shutil.copytree(source / "data", run_dir / "data")
    shutil.copy(source / "tokenizer.json", run_dir / "tokenizer.json")
    return run_dir


def _faults(folder: Path) -> Path:
    script = folder / "faults.py"
    script.write_text(FAULTS, encoding="utf-8")
    return script


def _close(got: Path, expected: Path) -> None:
    """Two runs' losses and final weights agree to the rounding of another world size."""
    losses, reference = _records(got), _records(expected)
    assert sorted(losses) == list(range(1, 9))
    for step in reference:
        assert losses[step] == pytest.approx(reference[step], rel=ACROSS_WORLD_SIZES), step
    final = _weights(expected)
    for name, value in _weights(got).items():
        np.testing.assert_allclose(value, final[name], rtol=1e-4, atol=5e-6, err_msg=name)  # weights ~1e-2; zeros jitter


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus) -> Path:
    """One process, no torchrun: 8 steps, checkpoints at 4 and 8 in the sharded format."""
    config = load_config("text", _args(tmp_path_factory.mktemp("single") / "run", corpus, *STEPS))
    prepare(config)
    train(config, log=lambda line: None)
    return config.run_dir


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, single, corpus) -> Path:
    """The same run on two processes started by two launchers that meet through a c10d rendezvous on localhost,
    as the launchers of two nodes do."""
    run_dir = _data_of(single, tmp_path_factory.mktemp("sharded") / "run")
    port = free_port()
    launch = ("--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
              f"127.0.0.1:{port}", "--rdzv-id", "aigc-test")
    with ThreadPoolExecutor(2) as pool:
        nodes = [pool.submit(torchrun, "train", "text", *_args(run_dir, corpus, *STEPS), launch=launch)
                 for _ in range(2)]
        done = [node.result() for node in nodes]
    assert any("2 process(es)" in d.stderr for d in done)
    return run_dir


def test_two_nodes_of_one_process_shard_the_model_and_match_one_process(single, sharded):
    _close(sharded, single)
    assert _records(sharded, "val_loss")[8] == pytest.approx(_records(single, "val_loss")[8], rel=ACROSS_WORLD_SIZES)
    checkpoint = load_checkpoint(sharded / "checkpoints" / "latest", training=True)
    assert sorted(p.name for p in (checkpoint.path / SHARDS).iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert checkpoint.train_state()["optimizer"] is None  # AdamW's moments are in the shards
    assert set(checkpoint.meta["training_files"]) == {f"{SHARDS}/{n}" for n in (".metadata", "__0_0.distcp",
                                                                                  "__1_0.distcp")}


def test_a_sharded_run_resumes_on_one_process_and_a_single_one_on_two(single, sharded, tmp_path, corpus):
    """2 -> 1: the shards of two processes load whole into one; 1 -> 2: one process's state is resharded. Both
    recompute activations in the backward pass (train.activation_checkpointing): the same numbers, less memory."""
    recompute = "train.activation_checkpointing=true"
    two_to_one = _copy_until(sharded, tmp_path / "two-to-one", 4)
    train(load_config("text", _args(two_to_one, corpus, *STEPS, recompute)), resume=True, log=lambda line: None)
    _close(two_to_one, single)
    one_to_two = _copy_until(single, tmp_path / "one-to-two", 4)
    done = torchrun("train", "text", *_args(one_to_two, corpus, *STEPS, recompute), "--resume")
    assert "(step 4)" in done.stderr
    _close(one_to_two, single)


def test_a_process_killed_mid_checkpoint_resumes_bit_identically(sharded, tmp_path, corpus):
    """Rank 1 is SIGKILLed while the checkpoint of step 8 is written: no step 8 appears (the half-written one stays
    hidden), and --resume continues from step 4 to exactly the uninterrupted run's losses and weights."""
    run_dir = _data_of(sharded, tmp_path / "killed")
    args = ["train", "text", *_args(run_dir, corpus, *STEPS)]
    killed = torchrun(*args, script=_faults(tmp_path), check=False, env={"AIGC_TEST_FAULT": "kill-in-save"})
    assert killed.returncode != 0
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_000004"]
    torchrun(*args, "--resume")
    assert _records(run_dir) == _records(sharded)
    expected = _weights(sharded)
    for name, value in _weights(run_dir).items():
        assert np.array_equal(value, expected[name]), name


def test_the_processes_stay_in_step_on_rank_zeros_clock_and_uneven_evaluations(single, tmp_path, corpus):
    """Rank 1's clock runs 100 times fast: each process deciding on its own clock, rank 1 would stop at once while
    rank 0 waited for it in the next step's collective for ever. Rank 0's clock decides for both.

    Three evaluation batches shared by two processes give rank 1 one fewer: with sharded weights each forward pass
    gathers from both, so rank 1 runs one uncounted pass more rather than leave rank 0 waiting."""
    run_dir = _data_of(single, tmp_path / "budget")
    done = torchrun("train", "text", *_args(run_dir, corpus, "train.max_steps=100000", "train.max_minutes=0.05",
                                            "train.schedule=time", "train.eval_batches=3", "train.eval_every=2"),
                    script=_faults(tmp_path), env={"AIGC_TEST_FAULT": "fast-clock"}, timeout=120)
    stops = re.findall(r"time budget of 0\.05 min reached at step (\d+)", done.stderr)  # lines may interleave
    assert len(stops) == 2 and stops[0] == stops[1], stops  # the same step on both processes
    assert int(stops[0]) > 4  # 3 s of rank 0's clock, not the 0.03 s of rank 1's
    assert len(_records(run_dir, "val_loss")) >= 2


def test_a_run_switching_between_ddp_and_fsdp(single, tmp_path, corpus):
    """A sharded checkpoint resumes with train.parallel=ddp (its shards load whole); a DDP checkpoint, whose optimizer
    state is one file in rank order, is refused by a sharded run with what to do instead."""
    to_ddp = _copy_until(single, tmp_path / "to-ddp", 4)
    train(load_config("text", _args(to_ddp, corpus, *STEPS, "train.parallel=ddp")), resume=True, log=lambda line: None)
    assert _records(to_ddp) == _records(single)  # one process either way: the same numbers
    assert not (to_ddp / "checkpoints" / "step_000008" / SHARDS).exists()
    with pytest.raises(TrainingError, match="written by a train.parallel=ddp run; resume it with train.parallel=ddp"):
        train(load_config("text", _args(to_ddp, corpus, "train.max_steps=12")), resume=True, log=lambda line: None)
