"""Quality at equal compute: val loss on tinyshakespeare (character level, last 10% held out).

The wall-time budget is what the nanoGPT CPU configuration (4 layers, 4 heads, 128 wide, context 64,
batch 12, lr 1e-3) needs for 2,000 iterations on this machine, measured here with that configuration
(or given with --seconds). Then our recipe trains for that long through ``aigc prepare`` and
``aigc train`` (cosine schedule over the time budget) and its val loss is measured on 50 batches.
nanoGPT reaches 1.88 there; the target is 1.70 or lower.

    python benchmarks/shakespeare_char.py [--seconds 80] [key=value ...]   # overrides of the recipe
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from aigc.config import ModelConfig, TrainConfig, load_config
from aigc.tasks import prepare
from aigc.models import GPT
from aigc.training.loop import train
from aigc.training.optim import build_optimizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
NANOGPT_CPU = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, bias=False, dropout=0.0, vocab_size=65)
RECIPE = [
    "tokenizer.kind=char", "data.document=file",
    "model.n_layer=3", "model.n_head=4", "model.n_embd=128", "model.block_size=64",
    "model.norm=rmsnorm", "model.mlp=swiglu", "model.position=rope", "model.bias=false", "model.dropout=0.0",
    "train.batch_size=32", "train.lr=5e-3", "train.min_lr=2e-4", "train.warmup_steps=50", "train.beta2=0.99",
    "train.weight_decay=0.1", "train.schedule=time", "train.max_steps=1000000", "train.eval_every=1000000",
    "train.eval_batches=50", "train.checkpoint_every=1000000", "train.log_every=50",
]


def nanogpt_seconds(iterations: int = 2000, sample: int = 40) -> float:
    """Wall time of ``iterations`` steps of the nanoGPT CPU configuration, from ``sample`` timed steps."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**NANOGPT_CPU))
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3), torch.device("cpu"))
    x = torch.randint(0, 65, (12, 64))
    for index in range(sample + 5):
        if index == 5:
            started = time.perf_counter()
        model(x, x).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / sample * iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, help="wall-time budget; default: measured nanoGPT time")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the recipe")
    args = parser.parse_args()
    seconds = args.seconds or nanogpt_seconds()
    text = SHAKESPEARE.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "train.txt").write_text(text[:cut], encoding="utf-8")
        (tmp_path / "val.txt").write_text(text[cut:], encoding="utf-8")
        config = load_config("text", [
            f"run.dir={tmp_path / 'run'}", f"data.paths=[{tmp_path / 'train.txt'}]",
            f"data.val_paths=[{tmp_path / 'val.txt'}]", f"train.max_minutes={seconds / 60}",
            *RECIPE, *args.overrides,
        ])
        prepare(config)
        started = time.perf_counter()
        result = train(config, log=lambda line: None)
        elapsed = time.perf_counter() - started
    print(f"\n| {'model':<44} | {'budget s':>8} | {'steps':>6} | {'tokens/s':>8} | {'val loss':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 8}|{'-' * 10}|{'-' * 10}|")
    print(f"| {'nanoGPT CPU config, 2,000 iters (reported)':<44} | {seconds:>8.0f} | {2000:>6} | {'':>8} | {1.88:>8.2f} |")
    m = config.model
    ours = f"aigc {m.n_layer}L {m.n_embd}w ctx{m.block_size} {m.norm}/{m.mlp}/{m.position}"
    print(f"| {ours:<44} | {elapsed:>8.0f} | {result.steps:>6} | {result.tokens_per_s:>8,.0f} | "
          f"{result.best_val_loss:>8.3f} |")
    print(f"\ntarget: val loss <= 1.70: {'PASS' if result.best_val_loss <= 1.70 else 'FAIL'}")


if __name__ == "__main__":
    main()
