"""Runs trained once a session for the end-to-end modules that need *a* run of a kind, not one of their own.

Each is tiny (30 steps) and read-only: a test that changes a run (eval into it, retrain it) copies it first
(``shutil.copytree(run, tmp_path / "run", symlinks=True)``), so no result depends on the order of the tests.
Modules whose thresholds were measured on a run of their own (test_run, test_translate, test_images, ...)
keep training it themselves.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc import prepare
from aigc.config import load_config
from aigc.training.loop import train
from tests.conftest import fixture
from tests.e2e.helpers import aigc

STEPS = ["train.max_minutes=null", "train.schedule=steps", "train.warmup_steps=5", "train.eval_every=30",
         "train.checkpoint_every=30", "train.eval_batches=2", "train.threads=2", "train.max_steps=30"]
TEXT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=64", "train.batch_size=8",
        "generate.temperature=0.7", "generate.top_k=11", "generate.frequency_penalty=1.5",
        "generate.max_new_tokens=20", "eval.samples=2", "eval.max_tokens=2000"]


def _trained(recipe: str, run_dir: Path, *overrides: str) -> Path:
    config = load_config(recipe, [f"run.dir={run_dir}", *overrides, *STEPS])
    prepare(config)
    train(config, log=lambda line: None)
    return run_dir


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The first 30,000 characters of tinyshakespeare."""
    path = tmp_path_factory.mktemp("tiny_corpus") / "shakespeare.txt"
    path.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """A character-level text run made by `aigc run` (with its eval report), a translation run and a digits run.

    The text and translation runs' folders are both named "run" (test_serve_models checks that a server tells
    them apart); the text run's sampling defaults are its own (top_k 11, frequency penalty 1.5).
    """
    root = tmp_path_factory.mktemp("tiny_runs")
    pairs = root / "pairs.tsv"
    lines = fixture("tatoeba_eng_cmn_slice.tsv").read_text(encoding="utf-8-sig").splitlines()
    pairs.write_text("\n".join(lines[:1500]) + "\n", encoding="utf-8")
    text = root / "a" / "run"
    done = aigc("run", "text", f"data.paths=[{tiny_corpus}]", f"run.dir={text}", *TEXT, *STEPS)
    assert done.returncode == 0, done.stderr
    return {
        "text": text,
        "translate": _trained("translate", root / "b" / "run", f"data.paths=[{pairs}]", "model.n_layer=1",
                              "model.n_encoder_layer=1", "model.n_head=2", "model.n_embd=32", "model.dropout=0",
                              "tokenizer.vocab_size=400", "train.batch_size=16", "generate.max_new_tokens=24"),
        "digits": _trained("digits", root / "c" / "digits", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                           "model.dropout=0", "train.batch_size=16"),
    }
