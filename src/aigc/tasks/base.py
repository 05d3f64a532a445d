"""The interface every kind of run implements: data in, batches for the loop, evaluation, generation.

A :class:`Task` is chosen once from ``data.kind`` (:func:`aigc.tasks.registry.task_for`); the stages,
the training loop, ``aigc generate`` and ``aigc serve`` ask it instead of asking what kind a run is.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from aigc.checkpoint import Checkpoint
from aigc.config import Config, GenerateConfig
from aigc.data.collect import CollectResult
from aigc.data.prepare import PrepareResult, prepared_settings
from aigc.errors import TrainingError
from aigc.generate.grammar import Grammar

if TYPE_CHECKING:
    from aigc.models.gpt import InputExtras
    from aigc.serve.workers import ServedModel


class Objective(Protocol):
    """A training loss other than the next-token cross-entropy (a preference run's DPO or ORPO)."""

    statistics: tuple[str, ...]  # the names of what each call reports besides the loss

    def weight(self, targets: torch.Tensor) -> int:
        """How much a micro-batch with ``targets`` counts in its step's mean (what the loss averages over)."""

    def __call__(self, forward: Callable, inputs: list, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's mean loss, by ``forward`` (the model as the loop calls it) on ``inputs``, and statistics
        to log (means over the micro-batch)."""


@dataclass
class GenerateRequest:
    """What ``aigc generate`` was asked besides the sampling settings: prompt(s), count and where output goes."""

    prompt: str | None
    n: int = 1
    seed: int | None = None
    stream: bool = False
    out: str | None = None
    truncate: bool = True
    lines: Iterable[str] = ()  # prompts, one per line, when there is no --prompt (stdin)
    grammar: Grammar | None = None  # what text runs' output must match (--json-schema, --regex, --choice, --grammar)


class Task(ABC):
    """One kind of run. Subclasses set ``name`` and ``model_kind`` and implement the abstract methods."""

    name: ClassVar[str]
    model_kind: ClassVar[str]  # the model.kind this task trains ("gpt" or "seq2seq")
    describes: ClassVar[str]  # a phrase for errors: "documents", "source/target pairs", ...

    def metrics(self, config: Config) -> dict[str, str | None]:
        """What ``aigc tune`` can optimise for a run of this kind: each metric, mapped to None when a run with
        ``config``'s settings reports it, or to the settings it needs (what the error tells the user)."""
        return {"val_loss": None}

    @abstractmethod
    def collect(self, config: Config) -> CollectResult:
        """Find the inputs and count their records into ``<run>/data/sources.json``."""

    @abstractmethod
    def prepare(self, config: Config) -> PrepareResult:
        """Clean, tokenize and shard the inputs into ``<run>/data``; write the tokenizer and the manifest."""

    def model_config(self, config: Config, manifest: dict) -> Config:
        """``config`` with the model settings the data decides (the vocabulary; tasks add their own)."""
        if config.model.kind != self.model_kind:
            raise TrainingError(f"model.kind={config.model.kind} cannot train on {self.describes} "
                                f"(data.kind={self.name}); use model.kind={self.model_kind}")
        vocab = manifest.get("model_vocab_size") or manifest["tokenizer"]["vocab_size"]
        if config.model.vocab_size is None:
            return config.model_copy(update={"model": config.model.model_copy(update={"vocab_size": vocab})})
        if config.model.vocab_size < vocab:
            raise TrainingError(f"model.vocab_size={config.model.vocab_size} is below the data's {vocab} tokens")
        return config

    @abstractmethod
    def samplers(self, config: Config, manifest: dict, rank: int, world: int) -> tuple[Any, Any | None]:
        """Train and val batch samplers for process ``rank`` of ``world``; val is None when it cannot fill a batch."""

    def prepared_settings(self, config: Config) -> dict[str, Any]:
        """The settings this kind's prepared data depends on (the manifest records them; a change re-prepares)."""
        return prepared_settings(config)

    def model_extras(self) -> InputExtras | None:
        """What this kind adds to a GPT's input embedding (pixel positions, codebook levels), or None."""
        return None

    def init_model(self, model: nn.Module, manifest: dict) -> None:
        """Copy into a fresh model what the data fixes (nothing, unless a task says otherwise)."""

    def objective(self, config: Config, model: nn.Module, device: torch.device) -> Objective | None:
        """What training minimises when it is not the next-token cross-entropy on the sampler's targets (None)."""
        return None

    @abstractmethod
    def generator(self, checkpoint: Checkpoint, device: str = "cpu", base: nn.Module | None = None) -> Any:
        """The generator of a loaded checkpoint: text, translations, images or speech from prompts.
        ``base``: the loaded base model of a LoRA run, shared with other adapters (text GPTs only have them)."""

    @abstractmethod
    def served_model(self) -> type[ServedModel]:
        """What ``aigc serve`` runs a run of this kind as: the API family it answers and the worker it runs on."""

    @abstractmethod
    def evaluate(self, generator: Any, run_dir: Path, manifest: dict, config: Config,
                 log: Callable[[str], None]) -> dict[str, Any]:
        """The report's metrics and samples for the run's held-out data."""

    def held_out_loss(self, generator: Any, data_root: Path, manifest: dict, config: Config) -> float | None:
        """Mean loss (nats per token) on the held-out data alone, without sampling: what ``aigc eval --quantize``
        compares before and after quantizing. None where the task has no such loss."""
        return None

    def scores_other_files(self) -> bool:
        """Whether ``aigc eval RUN data.paths=[...]`` can score files other than the run's own held-out split
        (prepared with the run's tokenizer, every record held out)."""
        return False

    report_keys: ClassVar[tuple[str, ...]] = ("loss", "perplexity", "tokens_scored")  # report.md's metric rows

    def report_rows(self, report: dict[str, Any]) -> list[tuple[str, Any]]:
        """The rows (metric, value) of ``eval/report.md``'s table for this kind's report."""
        return [(key, report[key]) for key in self.report_keys if report.get(key) is not None]

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        """What ``aigc eval`` prints of this kind's metrics besides the held-out loss (which every kind shares)."""
        return []

    def metric(self, report: dict[str, Any], name: str) -> float | None:
        """The value of ``aigc tune``'s metric ``name`` (one of :meth:`metrics`) in an evaluation report."""
        return report.get(name)

    @abstractmethod
    def sample_markdown(self, samples: list[dict[str, Any]]) -> list[str]:
        """The report's samples as markdown lines (``eval/report.md``)."""

    @abstractmethod
    def sample_text(self, sample: dict[str, Any], eval_dir: Path) -> str:
        """One sample as plain text (``samples/samples.txt`` and the summary of ``aigc run``)."""

    @abstractmethod
    def generate(self, generator: Any, request: GenerateRequest, settings: GenerateConfig,
                 write: Callable[[str], None]) -> None:
        """``aigc generate``: answer ``request`` with ``settings``; ``write`` prints one result line."""
