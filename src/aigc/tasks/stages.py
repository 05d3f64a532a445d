"""The stages that depend on the kind of run (:func:`collect`, :func:`prepare`, :func:`evaluate`,
:func:`load_generator`): each asks the run's task (:mod:`aigc.tasks.registry`) what to do."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from aigc.checkpoint import CHECKPOINTS, Checkpoint, as_checkpoint, load_checkpoint
from aigc.config import Config, apply_override, validate_config
from aigc.data.collect import CollectResult
from aigc.data.prepare import PrepareResult
from aigc.data.shards import MANIFEST, read_manifest
from aigc.errors import ConfigError, DataError
from aigc.evaluation import EvalResult, write_report
from aigc.models.quantize import quantize_model
from aigc.pretrained.init import resolve_init
from aigc.tasks.registry import task_for
from aigc.training.distributed import pick_device


def collect(config: Config) -> CollectResult:
    """The collect stage: find every input and count its records into ``<run>/data/sources.json``."""
    return task_for(config).collect(config)


def prepare(config: Config) -> PrepareResult:
    """The prepare stage: clean, tokenize and shard into ``<run>/data``; write ``<run>/tokenizer.json``
    (``model.init``'s tokenizer when fine-tuning)."""
    return task_for(config).prepare(resolve_init(config))


def load_generator(source: Checkpoint | Path, device: str = "auto", quantize: str | None = None,
                   bases: dict | None = None, backend: str = "torch"):
    """The generator of a run directory or checkpoint (or of one loaded already), as its task makes it;
    ``quantize="int8"``: its linear layers' weights as int8 (:func:`~aigc.models.quantize.quantize_model`).
    ``backend="llamacpp"``: a text GPT whose logits llama.cpp computes
    (:func:`~aigc.generate.llamacpp.llamacpp_generator`; int8 is then GGUF's q8_0).

    ``bases``: base models already loaded, by their identity. A LoRA run then puts its adapters on its
    base from there (loading it the first time), so a server with several adapters of one base holds the
    base's weights once. Quantized, each run gets its own base with its adapters merged in.
    """
    checkpoint = as_checkpoint(source)
    if device == "auto":  # llama.cpp's backend runs on the CPU
        device = "cpu" if backend == "llamacpp" else str(pick_device(device))
    if backend == "llamacpp":
        from aigc.generate.llamacpp import llamacpp_generator

        return llamacpp_generator(checkpoint, device, quantize)
    base = None
    if bases is not None and checkpoint.is_adapter and quantize is None:
        identity = checkpoint.base_identity()
        if identity not in bases:
            bases[identity] = checkpoint.load_base(device)
        base = bases[identity]
    generator = task_for(checkpoint.config).generator(checkpoint, device, base)
    quantize_model(generator.model, quantize)
    return generator


def evaluate(run_dir: Path, log: Callable[[str], None] = print, recipe: Config | None = None,
             overrides: Sequence[str] = (), quantize: str | None = None) -> EvalResult:
    """Score the run's best (else latest) checkpoint on its held-out data and write ``eval/report.{json,md}``.

    ``recipe``: evaluate with its ``eval`` and ``generate`` sections (``aigc run`` passes the current
    recipe); by default, the ones saved with the checkpoint. ``overrides``: ``eval.*``, ``generate.*`` and
    ``data.*`` settings; with ``data.paths=[...]`` the held-out data is every document of those files,
    prepared with the run's own tokenizer into ``eval/files/data`` and reported in ``eval/files/`` (how an
    imported model, which has no data of its own, is scored on a user's text; the run's own report stays).
    ``quantize``: score the model with int8 weights, and report the change of the held-out loss and
    perplexity against the stored weights where the task has such a loss.
    """
    best = run_dir / CHECKPOINTS / "best"
    checkpoint = load_checkpoint(best if best.exists() else run_dir)
    config = checkpoint.config
    if recipe is not None:
        config = config.model_copy(update={"eval": recipe.eval, "generate": recipe.generate})
    config = _with_eval_overrides(config, overrides)
    task = task_for(config)
    data_root = _held_out_root(task, config, checkpoint.path, run_dir, overrides, log)
    manifest = read_manifest(data_root / "data")
    generator = task.generator(checkpoint, str(pick_device("auto")))  # the GPU when there is one
    report: dict = {"checkpoint": str(checkpoint.path), "step": checkpoint.meta["step"]}
    if data_root != run_dir:
        report["data"] = manifest["sources"]["files"]
    stored = task.held_out_loss(generator, data_root, manifest, config) if quantize is not None else None
    quantize_model(generator.model, quantize)
    metrics = task.evaluate(generator, data_root, manifest, config, log)
    if stored is not None:
        report["quantization"] = {"mode": quantize, "loss_stored_weights": stored, "loss": metrics["loss"],
                                  "perplexity_change_percent": 100 * math.expm1(metrics["loss"] - stored)}
    elif quantize is not None:
        log(f"{task.name} runs have no held-out loss to compare: the report scores the {quantize} weights alone")
    report |= metrics
    folder = run_dir / "eval" if data_root == run_dir else data_root
    return write_report(run_dir, report, task.report_rows(report), task.summary_lines(report),
                        task.sample_markdown(report["samples"]), folder)


EVAL_SECTIONS = ("data", "eval", "generate")


def _with_eval_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """``config`` with ``data.*``, ``eval.*`` and ``generate.*`` overrides; any other key is a clear error."""
    for assignment in overrides:
        key = assignment.partition("=")[0]
        if key.split(".")[0] not in EVAL_SECTIONS or key == "data.kind":
            raise ConfigError(f"aigc eval takes {', '.join(s + '.*' for s in EVAL_SECTIONS)} settings (but not "
                              f"data.kind), not {assignment!r}: the model, its kind and its training are the checkpoint's")
    raw = config.model_dump(mode="json")
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_config(raw)


def _held_out_root(task, config: Config, checkpoint: Path, run_dir: Path, overrides: Sequence[str],
                   log: Callable[[str], None]) -> Path:
    """The folder whose ``data/`` holds the held-out split: the run itself, or ``eval/files`` prepared from
    the files ``data.paths`` names (every document held out; no built-in corpus, no saved ``val_paths``)."""
    if not any(a.startswith("data.") for a in overrides):
        if not (run_dir / "data" / MANIFEST).is_file():
            raise DataError(f"no prepared data in {run_dir / 'data'} to score: run `aigc prepare` with the run's "
                            f"recipe, or score files of your own: aigc eval {run_dir} data.paths=[notes/] (an "
                            "imported model has no data of its own)")
        return run_dir
    if not task.scores_other_files():
        raise ConfigError(f"aigc eval scores other files for text runs; this is a {task.name} run, scored on its own "
                          "held-out split (drop the data.* settings)")
    if not any(a.startswith("data.paths=") for a in overrides):
        raise ConfigError("data.* settings describe the files to score: name them with data.paths=[...] (the run's "
                          "own held-out split is scored when no data.* setting is given)")
    root = run_dir / "eval" / "files"
    data = config.data.model_copy(update={"val_paths": list(config.data.paths), "builtin": []})
    held_out = config.model_copy(update={
        "run": config.run.model_copy(update={"dir": root}), "data": data,
        "tokenizer": config.tokenizer.model_copy(update={"path": checkpoint / "tokenizer.json"}),
    })
    log(f"preparing {', '.join(data.val_paths)} with the run's tokenizer into {root / 'data'}")
    task.prepare(held_out)
    return root
