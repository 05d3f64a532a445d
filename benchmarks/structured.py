"""The cost of constrained decoding: llguidance's token mask per step on our vocabularies, and decoding speed
with a grammar against without one, at batch 1 and 16.

Vocabularies: the character one (tinyshakespeare), byte-level BPE of 4,096 (the recipes' default) and of
16,384 entries, trained here on tinyshakespeare. The mask is timed alone (a JSON schema of an object with a
bounded integer, an enum and a string, walked with random allowed tokens). Decoding runs a random GPT of the
code recipe's shape (4 layers, 256 wide, BPE 4,096) through ``TextGenerator.complete``: 64 new tokens per row,
free, and under the regex ``[a-z ]{400,}`` (never complete within 64 tokens, so every row decodes all 64).
Targets: constrained decoding at most 10% slower than free.

    python benchmarks/structured.py
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from loadwatch import cpu_flags  # benchmarks/loadwatch.py, beside this script

from aigc.config import ModelConfig
from aigc.generate.grammar import Constraints, Grammar
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.tokenizer import eot_id, train_bpe, train_char

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
SCHEMA = {"type": "object", "properties": {"mood": {"enum": ["calm", "angry"]}, "count": {"type": "integer",
          "minimum": 0, "maximum": 999}, "word": {"type": "string", "maxLength": 12}},
          "required": ["mood", "count", "word"], "additionalProperties": False}
NEW_TOKENS = 64


def mask_micros(tokenizer, steps: int = 200) -> float:
    """Mean microseconds per mask of the JSON schema, walking random allowed tokens (restarting when complete)."""
    constraints = Constraints(tokenizer, tokenizer.get_vocab_size(), frozenset({eot_id(tokenizer)}))
    rng, spent, done = random.Random(0), 0.0, 0
    matcher = constraints.matcher(Grammar.json_schema(SCHEMA))
    while done < steps:
        started = time.perf_counter()
        blocked = matcher.blocked()
        spent += time.perf_counter() - started
        allowed = (~blocked).nonzero()[:, 0].tolist()
        done += 1
        token = rng.choice(allowed)
        if token == eot_id(tokenizer) or not matcher.take(token) or matcher.complete:
            matcher = constraints.matcher(Grammar.json_schema(SCHEMA))
    return 1e6 * spent / done


def decode_rate(generator: TextGenerator, batch: int, grammar: Grammar | None) -> float:
    """Output tokens per second of ``batch`` rows of NEW_TOKENS each (best of three)."""
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, seed=1, ignore_eos=True, grammar=grammar)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        done = generator.complete(["def main():"] * batch, params)
        best = min(best, time.perf_counter() - started)
        assert all(len(c.token_ids) == NEW_TOKENS for c in done), [len(c.token_ids) for c in done]
    return batch * NEW_TOKENS / best


def main() -> None:
    text = SHAKESPEARE.read_text(encoding="utf-8")
    tokenizers = {"character": train_char([text], 128), "BPE 4,096": train_bpe([text], 4096),
                  "BPE 16,384": train_bpe([text], 16384)}
    print(f"\n{cpu_flags()}; torch {torch.__version__}\n")
    print("| vocabulary | entries | llguidance mask, us/token |")
    print("|---|---:|---:|")
    for name, tokenizer in tokenizers.items():
        print(f"| {name} | {tokenizer.get_vocab_size():,} | {mask_micros(tokenizer):.0f} |")

    torch.manual_seed(0)
    tokenizer = tokenizers["BPE 4,096"]
    config = ModelConfig(n_layer=4, n_head=4, n_embd=256, block_size=512, vocab_size=tokenizer.get_vocab_size())
    generator = TextGenerator(GPT(config).eval(), tokenizer)
    constrained = Grammar("regex", "[a-z ]{400,}")
    print("\n| batch | free, tokens/s | regex-constrained, tokens/s | slower by (target <= 10%) |")
    print("|---:|---:|---:|---:|")
    for batch in (1, 16):
        free, bound = decode_rate(generator, batch, None), decode_rate(generator, batch, constrained)
        slower = 1 - bound / free
        print(f"| {batch} | {free:,.0f} | {bound:,.0f} | {100 * slower:.1f}% {'PASS' if slower <= 0.10 else 'FAIL'} |")


if __name__ == "__main__":
    main()
