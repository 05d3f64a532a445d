"""The CUDA paths: training in bf16 autocast and compiled, batches copied from pinned memory, the CUDA RNG in
checkpoints, generation and serving on a GPU equal to the CPU's, int8 on a GPU, DDP and FSDP over NCCL.

Run with ``make test-gpu`` wherever CUDA is present; elsewhere every test here is skipped (the reason is on the
allow-list in tests/skips.py). ``make test`` hides the GPUs (CUDA_VISIBLE_DEVICES=""), so the CPU suite runs as
written on a GPU machine and these run only here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from aigc import prepare
from aigc.checkpoint import load_checkpoint, point
from aigc.config import load_config
from aigc.training.loop import train
from tests.conftest import fixture
from tests.e2e.helpers import Server, aigc, torchrun

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: tests/gpu runs where one is (make test-gpu)")

TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "train.batch_size=8",
        "train.lr=3e-3", "train.warmup_steps=2", "train.eval_every=10", "train.eval_batches=2", "train.log_every=1",
        "model.dropout=0", "train.schedule=steps", "train.max_minutes=null", "train.max_steps=10",
        "train.checkpoint_every=5", "train.keep_checkpoints=5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


def _run(root: Path, name: str, corpus: Path, *settings: str):
    config = load_config("text", [f"run.dir={root / name}", f"data.paths=[{corpus}]", *TINY, *settings])
    prepare(config)
    train(config, log=lambda line: None)
    return config


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus) -> dict[str, Path]:
    """The same 10 steps on the CPU and on the GPU (fp32), in bf16 autocast on the GPU, and compiled on the GPU."""
    root = tmp_path_factory.mktemp("runs")
    variants = {"cpu": ["train.device=cpu"], "cuda": ["train.device=cuda"],
                "bf16": ["train.device=cuda", "train.precision=bf16"],
                "compiled": ["train.device=cuda", "train.compile=true"]}
    return {name: _run(root, name, corpus, *settings).run_dir for name, settings in variants.items()}


def test_training_on_the_gpu_matches_the_cpu_in_fp32_bf16_and_compiled(runs):
    cpu = _losses(runs["cpu"])
    assert len(cpu) == 10 and cpu[-1] < cpu[0]
    assert _losses(runs["cuda"]) == pytest.approx(cpu, rel=1e-3)  # TF32 off by default: fp32 to rounding
    assert _losses(runs["compiled"]) == pytest.approx(_losses(runs["cuda"]), rel=1e-3)
    bf16 = _losses(runs["bf16"])
    assert bf16 == pytest.approx(cpu, rel=3e-2) and bf16[-1] < bf16[0]


def test_batches_reach_the_gpu_from_pinned_memory(runs, corpus, tmp_path, monkeypatch):
    """The loop copies each batch from pinned memory without blocking (the copy overlaps queued work)."""
    seen = []
    original = torch.Tensor.pin_memory

    def pinning(tensor, *args, **kwargs):
        pinned = original(tensor, *args, **kwargs)
        seen.append(pinned.is_pinned())
        return pinned

    monkeypatch.setattr(torch.Tensor, "pin_memory", pinning)
    config = load_config("text", [f"run.dir={tmp_path / 'pinned'}", f"data.paths=[{corpus}]", *TINY,
                                  "train.device=cuda", "train.max_steps=2"])
    shutil.copytree(runs["cuda"] / "data", config.run_dir / "data")
    shutil.copy(runs["cuda"] / "tokenizer.json", config.run_dir / "tokenizer.json")
    train(config, log=lambda line: None)
    assert seen and all(seen)
    assert _losses(config.run_dir) == pytest.approx(_losses(runs["cuda"])[:2], rel=1e-6)


def test_the_cuda_rng_is_saved_and_restored(corpus, tmp_path):
    """With dropout on the GPU, a run resumed from step 5 draws the masks of the uninterrupted one."""
    straight = _run(tmp_path, "straight", corpus, "train.device=cuda", "model.dropout=0.1").run_dir
    state = load_checkpoint(straight / "checkpoints" / "step_000005").train_state()
    assert "cuda" in state["rng"][0]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, symlinks=True)
    shutil.rmtree(resumed / "checkpoints" / "step_000010")
    point(resumed / "checkpoints", "latest", "step_000005")
    config = load_config("text", [f"run.dir={resumed}", f"data.paths=[{corpus}]", *TINY, "train.device=cuda",
                                  "model.dropout=0.1"])
    train(config, resume=True, log=lambda line: None)
    assert _losses(resumed) == _losses(straight)


def test_generate_and_serve_on_the_gpu_match_the_cpu(runs):
    run = runs["cpu"]
    checkpoint = load_checkpoint(run)
    ids = torch.randint(0, checkpoint.config.model.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on_cpu = checkpoint.load_model("cpu")(ids)
        on_gpu = checkpoint.load_model("cuda")(ids.cuda()).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-4, atol=1e-4)
    greedy = ["--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "24"]
    texts = {device: aigc("generate", run, "--device", device, *greedy) for device in ("cpu", "cuda")}
    assert texts["cpu"].returncode == texts["cuda"].returncode == 0, texts["cuda"].stderr
    assert texts["cuda"].stdout == texts["cpu"].stdout
    server = Server([run], "--device", "cuda")
    try:
        answer = httpx.post(f"{server.url}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 24,
                                                                  "temperature": 0}, timeout=60).json()
    finally:
        server.stop()
    assert answer["choices"][0]["text"].strip() and answer["choices"][0]["text"].strip() in texts["cpu"].stdout


def test_int8_on_the_gpu_works_or_says_why_not(runs):
    done = aigc("generate", runs["cpu"], "--device", "cuda", "--quantize", "int8", "--prompt", "ROMEO:",
                "--temperature", "0", "--max-new-tokens", "8")
    assert "Traceback" not in done.stderr
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than two GPUs: DDP and FSDP over NCCL need two")
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gpus_match_one_over_nccl(runs, corpus, tmp_path, parallel):
    run_dir = tmp_path / parallel
    run_dir.mkdir()
    shutil.copytree(runs["cuda"] / "data", run_dir / "data")
    shutil.copy(runs["cuda"] / "tokenizer.json", run_dir / "tokenizer.json")
    one = load_config("text", [f"run.dir={tmp_path / 'one'}", f"data.paths=[{corpus}]", *TINY, "train.device=cuda",
                               "train.grad_accum=2"])
    shutil.copytree(run_dir, one.run_dir)
    train(one, log=lambda line: None)
    done = torchrun("train", "text", f"run.dir={run_dir}", f"data.paths=[{corpus}]", *TINY, "train.device=auto",
                    "train.grad_accum=2", f"train.parallel={parallel}")
    assert "2 process(es) on cuda:0" in done.stderr
    assert _losses(run_dir) == pytest.approx(_losses(one.run_dir), rel=1e-4)
    reference = load_file(str(one.run_dir / "checkpoints" / "latest" / "model.safetensors"))
    for name, value in load_file(str(run_dir / "checkpoints" / "latest" / "model.safetensors")).items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-3, atol=1e-5, err_msg=name)
