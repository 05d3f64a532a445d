"""Runs trained once a session for the end-to-end modules that need *a* run of a kind, not one of their own.

Each is tiny (30 steps) and read-only: a test that changes a run (eval into it, retrain it) copies it first
(``shutil.copytree(run, tmp_path / "run", symlinks=True)``), so no result depends on the order of the tests.
Modules whose thresholds were measured on a run of their own (test_run, test_translate, test_images, ...)
keep training it themselves. Under pytest-xdist the first worker to ask trains them and the others reuse them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

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


def _trained(recipe: str, run_dir: Path, *overrides: str) -> None:
    config = load_config(recipe, [f"run.dir={run_dir}", *overrides, *STEPS])
    prepare(config)
    train(config, log=lambda line: None)


def _made_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """The folder ``name``, filled by ``make(folder)`` once per test session: by this process, or under
    pytest-xdist by the first worker that asks (the others wait for it and reuse what it made)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    with FileLock(f"{folder}.lock"):
        if not (folder / ".made").exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed to make it left
            folder.mkdir()
            make(folder)
            (folder / ".made").touch()
    return folder


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The first 30,000 characters of tinyshakespeare."""
    text = fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:30_000]
    folder = _made_once(tmp_path_factory, "tiny_corpus",
                        lambda f: (f / "shakespeare.txt").write_text(text, encoding="utf-8"))
    return folder / "shakespeare.txt"


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_corpus) -> dict[str, Path]:
    """A character-level text run made by `aigc run` (with its eval report), a translation run and a digits run.

    The text and translation runs' folders are both named "run" (test_serve_models checks that a server tells
    them apart); the text run's sampling defaults are its own (top_k 11, frequency penalty 1.5).
    """
    def make(root: Path) -> None:
        pairs = root / "pairs.tsv"
        lines = fixture("tatoeba_eng_cmn_slice.tsv").read_text(encoding="utf-8-sig").splitlines()
        pairs.write_text("\n".join(lines[:1500]) + "\n", encoding="utf-8")
        done = aigc("run", "text", f"data.paths=[{tiny_corpus}]", f"run.dir={root / 'a' / 'run'}", *TEXT, *STEPS)
        assert done.returncode == 0, done.stderr
        _trained("translate", root / "b" / "run", f"data.paths=[{pairs}]", "model.n_layer=1", "model.n_encoder_layer=1",
                 "model.n_head=2", "model.n_embd=32", "model.dropout=0", "tokenizer.vocab_size=400",
                 "train.batch_size=16", "generate.max_new_tokens=24")
        _trained("digits", root / "c" / "digits", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                 "model.dropout=0", "train.batch_size=16")

    root = _made_once(tmp_path_factory, "tiny_runs", make)
    return {"text": root / "a" / "run", "translate": root / "b" / "run", "digits": root / "c" / "digits"}
