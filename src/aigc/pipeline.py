"""``aigc run``: every stage into one run directory, skipping stages whose inputs did not change.

Each stage has a key: the hash of the config sections it reads plus the fingerprints of its inputs
(source files for collect and prepare, the data manifest for train). Keys of finished stages are kept
in ``<run>/stages.json``; a stage runs again only when its key changes or its outputs are gone, so
changing ``train.*`` retrains without re-tokenizing. A training run that was interrupted resumes.
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
from aigc.data.collect import collect, fingerprint
from aigc.data.prepare import prepare
from aigc.data.shards import MANIFEST
from aigc.data.sources import resolve_sources
from aigc.evaluation import evaluate
from aigc.files import file_hash, read_json, write_json
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


def run_pipeline(config: Config, log: Callable[[str], None] = print) -> PipelineResult:
    """Run collect -> prepare -> train -> eval (+ samples); return what ran, what was skipped and the outputs."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    stamps_path = run_dir / STAGES_FILE
    stamps = read_json(stamps_path) if stamps_path.is_file() else {}
    result = PipelineResult(run_dir)
    sources = fingerprint(resolve_sources(config.data))

    def stage(name: str, key: str, outputs_exist: bool, work: Callable[[], str | None]) -> None:
        if stamps.get(name) == key and outputs_exist:
            result.skipped.append(name)
            return
        log(f"== {name}")
        started = time.perf_counter()
        output = work()
        if output:
            result.outputs.append(output)
        if not result.interrupted:
            stamps[name] = key
            write_json(stamps_path, stamps)
        result.ran.append(name)
        log(f"== {name} done in {time.perf_counter() - started:.1f}s")

    data = config.data.model_dump(mode="json")
    stage("collect", _key(data, sources), (run_dir / "data" / "sources.json").is_file(),
          lambda: collect(config).summary())
    stage("prepare", _key(data, config.tokenizer.model_dump(mode="json"), config.seed, sources),
          (run_dir / "data" / MANIFEST).is_file(), lambda: prepare(config).summary())

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

    checkpoint_done = (run_dir / CHECKPOINTS / "latest").exists()
    stage("train", train_key, checkpoint_done, run_training)
    if result.interrupted:
        return result
    latest = (run_dir / CHECKPOINTS / "latest").resolve()
    eval_key = _key(config.eval.model_dump(mode="json"), config.seed, str(latest), latest.stat().st_mtime_ns)
    stage("eval", eval_key, (run_dir / "eval" / "report.json").is_file(),
          lambda: _evaluate_and_sample(run_dir, config, log))
    return result


def _evaluate_and_sample(run_dir: Path, config: Config, log: Callable[[str], None]) -> str:
    """Evaluate with the recipe's eval settings, write the samples to ``samples/samples.txt``, show a few."""
    outcome = evaluate(run_dir, log=log, settings=config.eval)
    samples = outcome.report["samples"]
    folder = run_dir / "samples"
    folder.mkdir(exist_ok=True)
    texts = [
        f"{s['source']}\n=> {s['translation']}\n(reference: {s['reference']})" if "source" in s
        else f"{s['prompt']} -> {outcome.folder / s['grid']}" if "grid" in s else s["prompt"] + s["completion"]
        for s in samples
    ]
    rule = "\n" + "-" * 60 + "\n"
    (folder / "samples.txt").write_text(rule.join(texts), encoding="utf-8")
    shown = [f"--- sample {i + 1} ---\n{text}" for i, text in enumerate(texts[:3])]
    return "\n".join([outcome.summary(), f"samples: {folder / 'samples.txt'}", *shown])
