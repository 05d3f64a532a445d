"""Decode speed of our engine against Hugging Face ``generate()`` on the same weights.

Both models hold identical random weights (ours exported to ``GPT2LMHeadModel`` with
``aigc.models.hf``). Greedy, 200 new tokens, no early stop, batch 1 and 8, for the nanoGPT CPU size
and a GPT-2-small size. Reported: time to first token (prefill of a 64-token prompt plus one token),
decode tokens/s after it, the ratio to Hugging Face, and, at batch 1, the memory-bandwidth floor:
the time to read every weight once per token at this machine's measured read rate.

    python benchmarks/generate.py [--new-tokens 200] [--threads N] [--dtype fp32|bf16]

``--dtype bf16`` holds both models' weights in bfloat16 (half the bytes to read per token).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from aigc.config import ModelConfig
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams
from aigc.models import GPT
from aigc.models.hf import to_transformers

SIZES = {
    "nanoGPT CPU (4L 128w, V65)": dict(n_layer=4, n_head=4, n_embd=128, block_size=512, vocab_size=65),
    "GPT-2 small (12L 768w, V50257)": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
}
PROMPT_TOKENS = 64


def read_bandwidth() -> float:
    """Bytes/s this machine reads: summing a 1 GiB tensor (best of 3)."""
    data = torch.ones(256 * 1024 * 1024)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best


def ours(engine: Engine, prompts: list[list[int]], new_tokens: int) -> tuple[float, float]:
    """(time to first token, decode seconds for the remaining tokens)."""
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0)
    started = time.perf_counter()
    steps = engine.steps(prompts, params)
    next(steps)
    first = time.perf_counter() - started
    count = sum(1 for _ in steps)
    assert count == new_tokens - 1
    return first, time.perf_counter() - started - first


def theirs(model, prompts: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    started = time.perf_counter()
    model.generate(prompts, max_new_tokens=1, min_new_tokens=1, **kwargs)
    first = time.perf_counter() - started
    started = time.perf_counter()
    out = model.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
    assert out.shape[1] == prompts.shape[1] + new_tokens
    return first, time.perf_counter() - started - first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights of both models")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.set_num_threads(args.threads)
    bandwidth = read_bandwidth()
    print(f"memory read rate: {bandwidth / 1e9:.1f} GB/s; {args.threads} threads; {args.dtype} weights; greedy, "
          f"{args.new_tokens} new tokens,"
          f" {PROMPT_TOKENS}-token prompts\n")
    header = (f"| {'model':<31} | {'batch':>5} | {'ours TTFT ms':>12} | {'HF TTFT ms':>10} | {'ours tok/s':>10} | "
              f"{'HF tok/s':>8} | {'ratio':>5} | {'floor tok/s':>11} |")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for name, shape in SIZES.items():
        torch.manual_seed(0)
        model = GPT(ModelConfig(**shape, mlp="gelu_tanh")).eval()
        hf = to_transformers(model).to(dtype)
        model = model.to(dtype)
        engine = Engine(model)
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for batch in (1, 8):
            prompts = torch.randint(0, shape["vocab_size"], (batch, PROMPT_TOKENS))
            ours(engine, prompts.tolist(), 8)  # warm-up
            with torch.inference_mode():
                theirs(hf, prompts, 8)
                hf_first, hf_decode = theirs(hf, prompts, args.new_tokens)
            our_first, our_decode = ours(engine, prompts.tolist(), args.new_tokens)
            ours_rate = batch * (args.new_tokens - 1) / our_decode
            hf_rate = batch * (args.new_tokens - 1) / hf_decode
            floor = f"{batch * bandwidth / weight_bytes:>11,.0f}" if batch == 1 else f"{'':>11}"
            print(f"| {name:<31} | {batch:>5} | {our_first * 1000:>12.1f} | {hf_first * 1000:>10.1f} | "
                  f"{ours_rate:>10,.0f} | {hf_rate:>8,.0f} | {ours_rate / hf_rate:>5.2f} | {floor} |", flush=True)
    print("\ntarget: ratio >= 2 at batch 1 on both sizes")


if __name__ == "__main__":
    main()
