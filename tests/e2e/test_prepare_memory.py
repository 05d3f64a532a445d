"""Prepare streams: a 200 MB corpus must prepare with peak RSS under 1 GB (measured in a child process)."""

import random
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_200mb_corpus_peak_rss_under_1gb(tmp_path):
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    corpus = tmp_path / "big.txt"
    with corpus.open("w") as handle:
        size = number = 0
        while size < 200_000_000:
            line = " ".join(rng.choices(words, k=rng.randint(5, 40))) + f" {number}\n"
            handle.write(line)
            size += len(line)
            number += 1
    args = ["prepare", "text", f"data.paths=[{corpus}]", "data.document=line", "tokenizer.kind=bpe",
            "tokenizer.train_max_mb=4", f"run.dir={tmp_path / 'run'}"]
    # The child reports its own peak, so other children of the test process cannot blur the figure.
    script = (f"import resource, sys; from aigc.cli import main; code = main({args!r}); "
              "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    peak_kib = int(done.stderr.rsplit("PEAK_KIB", 1)[1].split()[0])
    assert peak_kib < 1 << 20, f"peak RSS {peak_kib / 1024:.0f} MiB"
    assert "train:" in done.stdout
