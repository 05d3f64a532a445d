"""Throughput of the whole prepare stage against raw ``tokenizers`` encoding of the same text.

A 100 MB corpus is generated from the words of tinyshakespeare (one document per line, every line
unique). Both sides use the same BPE tokenizer, trained once beforehand:

- ours: ``aigc.data.prepare.prepare`` with ``tokenizer.path`` set: read, clean, dedup, split, encode,
  write shards and manifest;
- raw: ``Tokenizer.encode_batch_fast`` on the same lines already in memory, ids converted to numpy.

Target: our time at most 1.5x the raw encode time. Also prints the time with tokenizer training, and the
peak memory of preparing (streamed: it grows with the corpus only by dedup's hashes).

    python benchmarks/prepare.py [--mb 100]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from aigc.config import load_config
from aigc.tasks import prepare
from aigc.tokenizer import load_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def make_corpus(path: Path, megabytes: float) -> int:
    words = SHAKESPEARE.read_text(encoding="utf-8").split()
    rng = random.Random(0)
    size = number = 0
    with path.open("w", encoding="utf-8") as handle:
        while size < megabytes * 1e6:
            line = " ".join(rng.choices(words, k=rng.randint(5, 30))) + f" ({number})\n"
            handle.write(line)
            size += len(line.encode())
            number += 1
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        corpus = tmp_path / "corpus.txt"
        size = make_corpus(corpus, args.mb)
        common = [f"data.paths=[{corpus}]", "data.document=line", "tokenizer.kind=bpe", "tokenizer.vocab_size=4096",
                  "tokenizer.train_max_mb=8"]

        started = time.perf_counter()
        prepare(load_config("text", [*common, f"run.dir={tmp_path / 'trained'}"]))
        with_training = time.perf_counter() - started
        tokenizer_path = tmp_path / "trained" / "tokenizer.json"

        started = time.perf_counter()
        result = prepare(load_config("text", [*common, f"run.dir={tmp_path / 'ours'}", f"tokenizer.path={tokenizer_path}"]))
        ours = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the raw side reads it whole

        tokenizer = load_tokenizer(tokenizer_path)
        lines = corpus.read_text(encoding="utf-8").splitlines()
        started = time.perf_counter()
        tokens = 0
        for i in range(0, len(lines), 20_000):
            for encoding in tokenizer.encode_batch_fast(lines[i : i + 20_000], add_special_tokens=False):
                tokens += len(np.asarray(encoding.ids, dtype=np.uint16))
        raw = time.perf_counter() - started

    ours_tokens = sum(s["tokens"] for s in result.manifest["splits"].values())
    mb = size / 1e6
    rows = [
        ("raw tokenizers encode_batch_fast", raw, tokens),
        ("aigc prepare (given tokenizer)", ours, ours_tokens),
        ("aigc prepare (+ train BPE on 8 MB)", with_training, ours_tokens),
    ]
    print(f"\ncorpus: {mb:,.1f} MB, {len(lines):,} lines\n")
    print(f"| {'pipeline':<36} | {'seconds':>8} | {'MB/s':>7} | {'tokens':>12} |")
    print(f"|{'-' * 38}|{'-' * 10}|{'-' * 9}|{'-' * 14}|")
    for name, seconds, count in rows:
        print(f"| {name:<36} | {seconds:>8.1f} | {mb / seconds:>7.2f} | {count:>12,} |")
    ratio = ours / raw
    print(f"\npeak RSS of this process through both prepares: {peak_mib:,.0f} MiB (target for 200 MB: < 1 GiB)")
    print(f"overhead of prepare over raw encoding: {ratio:.2f}x (target <= 1.5x): {'PASS' if ratio <= 1.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
