"""A running stream's pace while long prompts arrive: the server's scheduler with prompts prefilled in chunks
(``--prefill-chunk 512``, the default) against prompts prefilled whole.

In process: one stream decodes 600 tokens (greedy, no end of text); once it runs, ten 1,800-token prompts
arrive one after another (each asking 1 token). Reported: the stream's inter-token latency, p50 and p99,
and the time to first token of the long prompts. Model: the code recipe's shape (4 layers, 192 wide, RoPE,
RMSNorm, SwiGLU) with a 2,048-token context, random weights, BPE 4,096.

    python benchmarks/chunked_prefill.py
"""

from __future__ import annotations

import itertools
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
LONG, PROMPTS, STREAM_TOKENS = 1800, 10, 600


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(generator: TextGenerator, prompts: list[list[int]], chunk: int) -> tuple[list[float], list[float]]:
    """The stream's gaps between tokens while the prompts arrive, and each prompt's time to first token (s)."""
    scheduler = Scheduler(generator, max_running=8, prefill_chunk=chunk)
    stamps, first_tokens, running = [], [], threading.Event()

    def stream_sink(event) -> None:
        stamps.append(time.perf_counter())
        running.set()

    scheduler.start()
    try:
        stream = Request(prompts[0][:8], SamplingParams(max_new_tokens=STREAM_TOKENS, temperature=0, ignore_eos=True),
                         stream_sink)
        scheduler.submit(stream)
        running.wait()
        arrived = time.perf_counter()
        for prompt in prompts:
            answered = threading.Event()
            started = time.perf_counter()
            scheduler.submit(Request(prompt, SamplingParams(max_new_tokens=1, temperature=0),
                                     lambda event, answered=answered: answered.set()))
            answered.wait()
            first_tokens.append(time.perf_counter() - started)
        done = time.perf_counter()
        stream.cancelled = True
    finally:
        scheduler.stop()
    gaps = [b - a for a, b in itertools.pairwise(stamps) if arrived <= b <= done]
    return gaps, first_tokens


def main() -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tokenizer = train_bpe([text], 4096)
    torch.manual_seed(0)
    config = ModelConfig(n_layer=4, n_head=4, n_embd=192, block_size=2048, norm="rmsnorm", mlp="swiglu",
                         position="rope", bias=False, vocab_size=tokenizer.get_vocab_size())
    generator = TextGenerator(GPT(config).eval(), tokenizer)
    ids = tokenizer.encode(text).ids
    prompts = [ids[i * LONG : (i + 1) * LONG] for i in range(PROMPTS)]
    print(f"\n{cpu_flags()}; torch {torch.__version__}\n")
    print("| prefill | stream ITL p50, ms | stream ITL p99, ms | long prompts' TTFT median, s |")
    print("|---|---:|---:|---:|")
    for name, chunk in [("whole prompt", 10**9), ("chunks of 512", 512), ("chunks of 128", 128)]:
        gaps, ttfts = measure(generator, prompts, chunk)
        print(f"| {name} | {1e3 * statistics.median(gaps):.1f} | {1e3 * percentile(gaps, 0.99):.1f} | "
              f"{statistics.median(ttfts):.3f} |")


if __name__ == "__main__":
    main()
