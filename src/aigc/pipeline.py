"""``aigc run``: every stage into one run directory, skipping stages whose inputs did not change.

Each stage has a key: the hash of the config sections it reads plus the fingerprints of its inputs
(source files for collect and prepare, the data manifest for train). Keys of finished stages are kept
in ``<run>/stages.json``; a stage runs again only when its key changes or its outputs are gone, so
changing ``train.*`` retrains without re-tokenizing. A training run that was interrupted resumes.
``aigc train`` prepares the data first too, when it is not prepared with its settings (:func:`prepare_if_needed`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aigc.checkpoint import CHECKPOINTS, latest_valid
from aigc.config import Config
from aigc.data.shards import MANIFEST
from aigc.data.sources import fingerprint, resolve_sources
from aigc.errors import DataError
from aigc.files import file_hash, read_json, write_json
from aigc.pretrained.init import resolve_init
from aigc.tasks import collect, evaluate, prepare, task_for
from aigc.training.loop import METRICS, train

STAGES_FILE = "stages.json"


@dataclass
class PipelineResult:
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> str:
        lines = [f"run directory: {self.run_dir}"]
        lines += [f"  ran:     {', '.join(self.ran) or '-'}", f"  skipped: {', '.join(self.skipped) or '-'} (inputs unchanged)"]
        return "\n".join([*lines, *self.outputs])


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class _Stages:
    """Runs named stages into ``result``, skipping those whose key is recorded in ``stages.json`` and whose outputs exist."""

    def __init__(self, run_dir: Path, log: Callable[[str], None]):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path, self.log = run_dir / STAGES_FILE, log
        self.stamps = read_json(self.path) if self.path.is_file() else {}
        self.result = PipelineResult(run_dir)

    def run(self, name: str, key: str, outputs_exist: bool, work: Callable[[], str | None]) -> None:
        if self.stamps.get(name) == key and outputs_exist:
            self.result.skipped.append(name)
            return
        self.log(f"== {name}")
        started = time.perf_counter()
        output = work()
        if output:
            self.result.outputs.append(output)
        if not self.result.interrupted:
            self.stamps[name] = key
            write_json(self.path, self.stamps)
        self.result.ran.append(name)
        self.log(f"== {name} done in {time.perf_counter() - started:.1f}s")


def _data_stages(config: Config, stages: _Stages) -> None:
    """collect and prepare, each skipped when the data settings and the source files are unchanged."""
    data_dir = config.run_dir / "data"
    sources = fingerprint(resolve_sources(config.data))
    data = config.data.model_dump(mode="json")
    stages.run("collect", _key(data, sources), (data_dir / "sources.json").is_file(), lambda: collect(config).summary())
    stages.run("prepare", _key(task_for(config).prepared_settings(config), config.seed, sources),
               (data_dir / MANIFEST).is_file(), lambda: prepare(config).summary())


def is_prepared(config: Config) -> bool:
    """Whether ``<run>/data`` holds data prepared with these data and tokenizer settings from these files.

    The manifest records all three, so data prepared by ``aigc prepare``, ``aigc run`` or the Python
    API counts alike.
    """
    path = config.run_dir / "data" / MANIFEST
    if not path.is_file():
        return False
    manifest = read_json(path)
    settings = task_for(config).prepared_settings(config)
    return (manifest.get("config") == settings and manifest.get("seed") == config.seed
            and manifest.get("sources", {}).get("fingerprint") == fingerprint(resolve_sources(config.data)))


def prepare_if_needed(config: Config, rank: int = 0, wait_s: float = 3600.0) -> str | None:
    """Collect and prepare the run's data unless :func:`is_prepared`; the summaries when it ran, else None.

    Under torchrun only ``rank`` 0 prepares; the other processes wait (at most ``wait_s``) for its manifest.
    """
    config = resolve_init(config, log=lambda line: None)
    if rank == 0:
        return None if is_prepared(config) else "\n".join([collect(config).summary(), prepare(config).summary()])
    deadline = time.monotonic() + wait_s
    while not is_prepared(config):
        if time.monotonic() > deadline:
            raise DataError(f"process {rank} waited {wait_s:.0f} s for process 0 to prepare {config.run_dir / 'data'}")
        time.sleep(0.5)
    return None


def run_pipeline(config: Config, log: Callable[[str], None] = print) -> PipelineResult:
    """Run collect -> prepare -> train -> eval (+ samples); return what ran, what was skipped and the outputs."""
    run_dir = config.run_dir
    stages = _Stages(run_dir, log)
    config = resolve_init(config, log)
    result = stages.result
    _data_stages(config, stages)
    manifest_hash = file_hash(run_dir / "data" / MANIFEST)
    train_key = _key(config.model.model_dump(mode="json"), config.train.model_dump(mode="json"), config.seed, manifest_hash)

    def run_training() -> str:
        latest = latest_valid(run_dir, warn=log)
        resume = latest is not None and _key(
            latest.config.model.model_copy(update={"vocab_size": config.model.vocab_size}).model_dump(mode="json"),
            latest.config.train.model_dump(mode="json"), latest.config.seed, latest.meta.get("manifest_sha256"),
        ) == train_key
        if latest is not None and not resume:
            archive = run_dir / f"{CHECKPOINTS}-before-{time.strftime('%Y%m%d-%H%M%S')}"
            shutil.move(str(run_dir / CHECKPOINTS), archive)
            if (run_dir / METRICS).is_file():
                shutil.move(str(run_dir / METRICS), archive / METRICS)
            log(f"settings changed: the previous checkpoints are kept in {archive}")
        outcome = train(config, resume=resume, log=log)
        result.interrupted = outcome.interrupted
        return outcome.summary()

    stages.run("train", train_key, (run_dir / CHECKPOINTS / "latest").exists(), run_training)
    if result.interrupted:
        return result
    latest = (run_dir / CHECKPOINTS / "latest").resolve()
    eval_key = _key(config.eval.model_dump(mode="json"), config.generate.model_dump(mode="json"), config.seed,
                    str(latest), latest.stat().st_mtime_ns)
    stages.run("eval", eval_key, (run_dir / "eval" / "report.json").is_file(),
               lambda: _evaluate_and_sample(run_dir, config, log))
    return result


def _evaluate_and_sample(run_dir: Path, config: Config, log: Callable[[str], None]) -> str:
    """Evaluate with the recipe's eval and generate settings, write ``samples/samples.txt``, show a few."""
    outcome = evaluate(run_dir, log=log, recipe=config)
    samples = outcome.report["samples"]
    folder = run_dir / "samples"
    folder.mkdir(exist_ok=True)
    task = task_for(config)
    texts = [task.sample_text(sample, outcome.folder) for sample in samples]
    rule = "\n" + "-" * 60 + "\n"
    (folder / "samples.txt").write_text(rule.join(texts), encoding="utf-8")
    shown = [f"--- sample {i + 1} ---\n{text}" for i, text in enumerate(texts[:3])]
    return "\n".join([outcome.summary(), f"samples: {folder / 'samples.txt'}", *shown])
