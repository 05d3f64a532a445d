"""Training tokens/s of our GPT against Hugging Face ``GPT2LMHeadModel`` built from the identical config.

Same weights (ours exported with ``aigc.models.hf``), same character-level tinyshakespeare batches, same
AdamW (``aigc.training.optim.build_optimizer``), same loss (cross-entropy on the logits), same threads.
Each measurement runs in its own process, so peak RSS is that model's alone. Model FLOPs utilisation
is measured against this machine's matmul rate in the chosen precision (2048^3 products, same threads).

    python benchmarks/train_throughput.py [--steps 20] [--no-compile] [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
CONFIGS = {
    "nanoGPT CPU (4L 128w ctx64 b12)": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12),
    "larger (6L 384w ctx256 b12)": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=12),
}


def matmul_gflops(threads: int, dtype: torch.dtype = torch.float32) -> float:
    """The machine's matmul rate: the best of five timings of ten 2048^3 products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 2 * 2048**3 * 10 / (time.perf_counter() - started) / 1e9)
    return best


def worker(spec: dict) -> dict:
    """Train ``spec['impl']`` for a few steps; return tokens/s and this process's peak RSS."""
    from aigc.config import ModelConfig, TrainConfig
    from aigc.models import GPT
    from aigc.models.hf import to_transformers
    from aigc.training.optim import build_optimizer

    torch.set_num_threads(spec["threads"])
    text = SHAKESPEARE.read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text[:200_000]], dtype=np.int64)
    shape = {k: v for k, v in spec["config"].items() if k != "batch"}
    batch, block = spec["config"]["batch"], shape["block_size"]
    config = ModelConfig(**shape, vocab_size=len(chars), mlp="gelu", dropout=0.0)
    torch.manual_seed(0)
    model = GPT(config)
    flops_per_token = model.flops_per_token()
    if spec["impl"] == "hf":
        model = to_transformers(model)
    model.train()
    forward = torch.compile(model) if spec["compile"] else model

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        output = forward(x)
        logits = output.logits if spec["impl"] == "hf" else output
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    optimizer = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")

    def step() -> None:
        offsets = rng.integers(0, len(data) - block - 1, batch)
        rows = torch.from_numpy(np.stack([data[o : o + block + 1] for o in offsets]))
        with autocast:
            loss = loss_of(rows[:, :-1], rows[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for _ in range(3):
        step()
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    seconds = (time.perf_counter() - started) / spec["steps"]
    return {
        "tokens_per_s": batch * block / seconds,
        "ms_per_step": seconds * 1000,
        "warmup_s": warmup,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "flops_per_token": flops_per_token,
    }


def measure(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"worker failed for {spec}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    peak = matmul_gflops(args.threads, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    print(f"{args.precision} matmul rate: {peak:,.0f} GFLOP/s on {args.threads} threads (MFU is against it)\n")
    header = f"| {'config':<32} | {'mode':<7} | {'ours tok/s':>10} | {'HF tok/s':>9} | {'ratio':>5} | {'ours MFU':>8} | {'HF MFU':>6} | {'ours RSS':>8} | {'HF RSS':>7} |"
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    modes = [False] if args.no_compile else [False, True]
    for name, shape in CONFIGS.items():
        for compile_ in modes:
            spec = dict(config=shape, steps=args.steps, threads=args.threads, precision=args.precision, compile=compile_)
            ours, hf = measure(dict(spec, impl="ours")), measure(dict(spec, impl="hf"))
            mfu = [r["tokens_per_s"] * r["flops_per_token"] / (peak * 1e9) for r in (ours, hf)]
            print(f"| {name:<32} | {'compile' if compile_ else 'eager':<7} | {ours['tokens_per_s']:>10,.0f} | "
                  f"{hf['tokens_per_s']:>9,.0f} | {ours['tokens_per_s'] / hf['tokens_per_s']:>5.2f} | {mfu[0]:>8.0%} | "
                  f"{mfu[1]:>6.0%} | {ours['peak_rss_mib']:>6,.0f}Mi | {hf['peak_rss_mib']:>5,.0f}Mi |", flush=True)
    print("\ntarget: ratio >= 1.3 on both configs, eager and compiled")


if __name__ == "__main__":
    main()
