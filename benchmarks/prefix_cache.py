"""Time to first token of chat turns that share a long system prompt, with the server's prefix cache and
without it.

The server's scheduler (``aigc serve``'s continuous batching, in process) answers 8 requests one after
another, each a 1,000-token system prompt (the same for all) followed by a question of its own, 1 new token
each. The first request computes the whole prompt either way; with the cache the later ones compute only
what follows the shared blocks. Model: Qwen2.5-0.5B's shape (24 layers, 896 wide, 14 query and 2 key/value
heads) with random weights, float32, or ``--small`` for the code recipe's (4 layers, 192 wide).
Target: later requests' TTFT at least 5x lower than the first's.

    python benchmarks/prefix_cache.py [--small]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import torch
from loadwatch import cpu_flags  # benchmarks/loadwatch.py, beside this script

from aigc.config import ModelConfig
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.serve.scheduler import Request, Scheduler
from aigc.tokenizer import train_bpe

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
QWEN_05B = dict(n_layer=24, n_head=14, n_kv_head=2, n_embd=896, mlp_hidden=4864, block_size=2048, norm="rmsnorm",
                mlp="swiglu", position="rope", bias=False, qkv_bias=True)
SMALL = dict(n_layer=4, n_head=4, n_embd=192, block_size=2048, norm="rmsnorm", mlp="swiglu", position="rope", bias=False)
SYSTEM_TOKENS, REQUESTS = 1000, 8


def ttfts(generator: TextGenerator, prompts: list[list[int]], cache_bytes: int) -> list[float]:
    """Seconds from submit to first token of each prompt, one request at a time."""
    scheduler = Scheduler(generator, max_running=4, prefix_cache_bytes=cache_bytes)
    scheduler.start()
    times = []
    try:
        for prompt in prompts:
            first = threading.Event()
            started = time.perf_counter()
            scheduler.submit(Request(prompt, SamplingParams(max_new_tokens=1, temperature=0, ignore_eos=True),
                                     lambda event, first=first: first.set()))
            first.wait()
            times.append(time.perf_counter() - started)
    finally:
        scheduler.stop()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the code recipe's shape instead of Qwen2.5-0.5B's")
    args = parser.parse_args()
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tokenizer = train_bpe([text], 4096)
    torch.manual_seed(0)
    shape = SMALL if args.small else QWEN_05B
    generator = TextGenerator(GPT(ModelConfig(**shape, vocab_size=tokenizer.get_vocab_size())).eval(), tokenizer)
    system = tokenizer.encode(text).ids[:SYSTEM_TOKENS]
    prompts = [system + tokenizer.encode(f"\nQuestion {i}: who speaks next, and why?").ids for i in range(REQUESTS)]
    print(f"\n{cpu_flags()}; torch {torch.__version__}; model {'small' if args.small else 'Qwen2.5-0.5B shape'}, "
          f"prompts of {len(prompts[0])} tokens ({SYSTEM_TOKENS} shared)\n")
    print("| prefix cache | first request TTFT, s | later requests' TTFT (median), s | first / later |")
    print("|---|---:|---:|---:|")
    for name, budget in [("off", 0), ("on (256 MiB)", 256 << 20)]:
        times = ttfts(generator, prompts, budget)
        later = statistics.median(times[1:])
        print(f"| {name} | {times[0]:.3f} | {later:.3f} | {times[0] / later:.1f}x |")
    print("\ntarget: later requests at least 5x faster than the first with the cache on")


if __name__ == "__main__":
    main()
