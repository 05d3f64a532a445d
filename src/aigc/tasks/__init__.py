"""Kinds of run as plug-ins: one :class:`~aigc.tasks.base.Task` per kind, chosen once in :mod:`.registry`.

The stage functions here (:func:`collect`, :func:`prepare`, :func:`evaluate`, :func:`load_generator`)
ask the run's task; nothing else in aigc asks what kind a run is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aigc.checkpoint import CHECKPOINTS, load_checkpoint
from aigc.config import Config
from aigc.data.collect import CollectResult
from aigc.data.prepare import PrepareResult
from aigc.data.shards import read_manifest
from aigc.evaluation import EvalResult, write_report
from aigc.tasks.registry import task_for


def collect(config: Config) -> CollectResult:
    """The collect stage: find every input and count its records into ``<run>/data/sources.json``."""
    return task_for(config).collect(config)


def prepare(config: Config) -> PrepareResult:
    """The prepare stage: clean, tokenize and shard into ``<run>/data``; write ``<run>/tokenizer.json``."""
    return task_for(config).prepare(config)


def load_generator(path: Path, device: str = "cpu"):
    """The generator of a run directory or checkpoint, as its task makes it."""
    return task_for(load_checkpoint(path).config).generator(path, device)


def evaluate(run_dir: Path, log: Callable[[str], None] = print, recipe: Config | None = None) -> EvalResult:
    """Score the run's best (else latest) checkpoint on its held-out data and write ``eval/report.{json,md}``.

    ``recipe``: evaluate with its ``eval`` and ``generate`` sections (``aigc run`` passes the current
    recipe); by default, the ones saved with the checkpoint.
    """
    best = run_dir / CHECKPOINTS / "best"
    checkpoint = load_checkpoint(best if best.exists() else run_dir)
    config = checkpoint.config
    if recipe is not None:
        config = config.model_copy(update={"eval": recipe.eval, "generate": recipe.generate})
    task = task_for(config)
    generator = task.generator(checkpoint.path)
    metrics = task.evaluate(generator, run_dir, read_manifest(run_dir / "data"), config, log)
    report = {"checkpoint": str(checkpoint.path), "step": checkpoint.meta["step"], **metrics}
    return write_report(run_dir, report, task.sample_markdown(report["samples"]))
