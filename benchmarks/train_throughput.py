"""Training tokens/s of our GPT against Hugging Face ``GPT2LMHeadModel`` built from the identical config.

Same weights: this process builds our GPT once (seed 0) and writes its state dict twice, under our
names and under Hugging Face names (``aigc.models.hf``); each side's worker then builds only its own
model (ours ``GPT``, theirs ``GPT2LMHeadModel`` from the same ``hf_config``) and loads its file the same
way. Same character-level tinyshakespeare batches, same AdamW (``aigc.training.optim.build_optimizer``),
same loss (cross-entropy on the logits), same threads. Each measurement runs in its own process that
never builds the other model, so the peak RSS column is that model's alone (its weights, gradients,
AdamW moments and activations, on top of the interpreter, torch and the data; the HF worker also
imports ``transformers``). Model FLOPs utilisation is measured against this machine's matmul rate in the
chosen precision (2048^3 products, same threads).

    python benchmarks/train_throughput.py [--steps 20] [--no-compile] [--precision fp32|bf16]
    python benchmarks/train_throughput.py --quick          # smoke run: 3 steps, eager, small config only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from loadwatch import LoadWatch  # benchmarks/loadwatch.py, beside this script

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


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_config(spec: dict, vocab: int):
    from aigc.config import ModelConfig

    shape = {k: v for k, v in spec["config"].items() if k != "batch"}
    return ModelConfig(**shape, vocab_size=vocab, mlp="gelu", dropout=0.0)


def export_weights(spec: dict, vocab: int, folder: Path) -> None:
    """Our GPT's initial weights (seed 0) under our names and under Hugging Face names, for the two workers."""
    from safetensors.torch import save_file

    from aigc.models import GPT
    from aigc.models.hf import hf_state_dict

    torch.manual_seed(0)
    model = GPT(model_config(spec, vocab))
    # safetensors refuses shared storage (the tied embedding): every tensor gets its own copy
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, folder / "ours.safetensors")
    save_file({k: v.detach().clone().contiguous() for k, v in hf_state_dict(model).items()}, folder / "hf.safetensors")


def worker(spec: dict) -> dict:
    """Build only ``spec['impl']``'s model, load its exported weights, train a few steps; tokens/s and peak RSS."""
    from safetensors.torch import load_file

    from aigc.config import TrainConfig
    from aigc.training.optim import build_optimizer

    torch.set_num_threads(spec["threads"])
    text = SHAKESPEARE.read_text(encoding="utf-8")
    chars = sorted(set(text))
    data = np.array([chars.index(c) for c in text[:200_000]], dtype=np.int64)
    batch, block = spec["config"]["batch"], spec["config"]["block_size"]
    config = model_config(spec, len(chars))
    folder = Path(spec["weights"])
    if spec["impl"] == "hf":
        import transformers

        from aigc.models.hf import hf_config

        fields = {k: v for k, v in hf_config(config).items() if k not in ("model_type", "architectures")}
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields))
        missing, unexpected = model.load_state_dict(load_file(folder / "hf.safetensors"), strict=False)
        if [k for k in missing if not k.endswith("attn.bias") and k != "lm_head.weight"] or unexpected:
            raise RuntimeError(f"weight names disagree with transformers: missing {missing}, unexpected {unexpected}")
        flops_per_token = None
    else:
        from aigc.models import GPT

        model = GPT(config)
        model.load_state_dict(load_file(folder / "ours.safetensors"))
        flops_per_token = model.flops_per_token()
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
        "peak_rss_mib": peak_rss_mib(),
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
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 steps, eager, the small config only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    load = LoadWatch(threads=args.threads).start()
    configs = dict(list(CONFIGS.items())[:1]) if args.quick else CONFIGS
    steps = 3 if args.quick else args.steps
    peak = matmul_gflops(args.threads, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    print(f"{args.precision} matmul rate: {peak:,.0f} GFLOP/s on {args.threads} threads (MFU is against it)\n")
    header = (f"| {'config':<32} | {'mode':<7} | {'ours tok/s':>10} | {'HF tok/s':>9} | {'ratio':>5} | "
              f"{'ours MFU':>8} | {'HF MFU':>6} | {'ours RSS':>8} | {'HF RSS':>7} |")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    modes = [False] if args.no_compile or args.quick else [False, True]
    chars = len(set(SHAKESPEARE.read_text(encoding="utf-8")))
    with tempfile.TemporaryDirectory(prefix="aigc-throughput-") as tmp:
        for name, shape in configs.items():
            folder = Path(tmp) / str(len(os.listdir(tmp)))
            folder.mkdir()
            export_weights(dict(config=shape), chars, folder)
            for compile_ in modes:
                spec = dict(config=shape, steps=steps, threads=args.threads, precision=args.precision,
                            compile=compile_, weights=str(folder))
                ours, hf = measure(dict(spec, impl="ours")), measure(dict(spec, impl="hf"))
                # the same architecture, so the same FLOPs per token (counted on ours)
                mfu = [r["tokens_per_s"] * ours["flops_per_token"] / (peak * 1e9) for r in (ours, hf)]
                print(f"| {name:<32} | {'compile' if compile_ else 'eager':<7} | {ours['tokens_per_s']:>10,.0f} | "
                      f"{hf['tokens_per_s']:>9,.0f} | {ours['tokens_per_s'] / hf['tokens_per_s']:>5.2f} | "
                      f"{mfu[0]:>8.0%} | "
                      f"{mfu[1]:>6.0%} | {ours['peak_rss_mib']:>6,.0f}Mi | {hf['peak_rss_mib']:>5,.0f}Mi |", flush=True)
    print("\nRSS: peak resident memory of a worker process that builds only that model (the HF one also imports"
          "\ntransformers; both import torch and aigc and hold the same data)")
    print("target: ratio >= 1.3 on both configs, eager and compiled")
    print(load.verdict())


if __name__ == "__main__":
    main()
