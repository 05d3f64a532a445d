"""Text and code: documents for the decoder-only GPT, continued from a prompt."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from aigc.checkpoint import Checkpoint
from aigc.config import Config, GenerateConfig
from aigc.data.collect import CollectResult, collect_files
from aigc.data.loader import WindowSampler
from aigc.data.prepare import PrepareResult, prepare_documents
from aigc.data.shards import open_split
from aigc.data.sources import read_source
from aigc.evaluation import score
from aigc.flags import unescape
from aigc.generate.sampling import SamplingParams, sampling_params
from aigc.generate.text import TextGenerator
from aigc.tasks.base import GenerateRequest, Task
from aigc.tasks.text.evaluation import SAMPLE_KEYS, code_rows, evaluate_documents, parse_rate, sample_lines

if TYPE_CHECKING:
    from aigc.serve.workers import ServedModel

log = logging.getLogger(__name__)


def parse_rate_needs(config: Config) -> str | None:
    """None when the evaluation checks the completions as code (and so reports a parse rate), else what it needs."""
    if config.eval.task != "code":
        return "eval.task=code (the evaluation then checks the code)"
    return None if config.eval.samples else "eval.samples above 0 (the held-out functions it completes)"


class TextGPTTask(Task):
    """What the kinds a text GPT runs share (text and chat): the text generator, the completions server, the
    samples' diversity and code checks in the report, and the parse rate among aigc tune's metrics."""

    model_kind = "gpt"

    def generator(self, checkpoint: Checkpoint, device: str = "cpu", base: nn.Module | None = None) -> TextGenerator:
        return TextGenerator.from_checkpoint(checkpoint, device, base)

    def served_model(self) -> type[ServedModel]:
        from aigc.serve.workers import CompletionModel

        return CompletionModel

    def report_rows(self, report: dict[str, Any]) -> list[tuple[str, Any]]:
        return super().report_rows(report) + code_rows(report)

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        return sample_lines(report)

    def metric(self, report: dict[str, Any], name: str) -> float | None:
        return parse_rate(report) if name == "parse_rate" else report.get(name)


class TextTask(TextGPTTask):
    name, describes = "text", "documents"
    report_keys = ("loss", "perplexity", "bits_per_byte", "tokens_scored", *SAMPLE_KEYS)

    def metrics(self, config: Config) -> dict[str, str | None]:
        return {"val_loss": None, "bits_per_byte": None, "parse_rate": parse_rate_needs(config)}

    def collect(self, config: Config) -> CollectResult:
        return collect_files(config, read_source)

    def prepare(self, config: Config) -> PrepareResult:
        return prepare_documents(config)

    def samplers(self, config: Config, manifest: dict, rank: int, world: int) -> tuple[Any, Any | None]:
        tc, data_dir, block = config.train, config.run_dir / "data", config.seq_len
        train = WindowSampler(open_split(data_dir, "train", manifest), block, tc.batch_size, tc.grad_accum,
                              config.seed, rank, world, "train")
        val_tokens = open_split(data_dir, "val", manifest)
        val = (WindowSampler(val_tokens, block, tc.batch_size, world, config.seed, rank, world, "val")
               if len(val_tokens) >= block + 2 else None)
        return train, val

    def evaluate(self, generator: TextGenerator, run_dir: Path, manifest: dict, config: Config,
                 log: Callable[[str], None]) -> dict[str, Any]:
        return evaluate_documents(generator, run_dir, manifest, config)

    def held_out_loss(self, generator: TextGenerator, data_root: Path, manifest: dict, config: Config) -> float:
        val = open_split(data_root / "data", "val", manifest)
        nll, count, _ = score(generator.model, val, config.model.block_size, config.eval.max_tokens)
        return nll / count

    def scores_other_files(self) -> bool:
        return True


    def sample_markdown(self, samples: list[dict[str, Any]]) -> list[str]:
        return [line for s in samples for line in ("```", s["prompt"] + s["completion"], "```", "")]

    def sample_text(self, sample: dict[str, Any], eval_dir: Path) -> str:
        return sample["prompt"] + sample["completion"]

    def generate(self, generator: TextGenerator, request: GenerateRequest, settings: GenerateConfig,
                 write: Callable[[str], None]) -> None:
        """Continue ``request.prompt``, or every prompt line (``\\n`` inside a line is a newline); samples
        of one prompt are separated by a blank line, so only generated text reaches stdout."""
        params = sampling_params(settings, seed=request.seed, truncate_prompt=request.truncate, grammar=request.grammar)
        prompts = [request.prompt] if request.prompt is not None else prompt_lines(request)
        for prompt in prompts:
            write_samples(generator, prompt, request, params, write)


def write_samples(generator: TextGenerator, text: str, request: GenerateRequest, params: SamplingParams,
                  write: Callable[[str], None], strip_space: bool = False) -> None:
    """``request.n`` samples continuing ``text``, separated by a blank line; ``strip_space`` drops the one space
    each sample starts with (a reply after aigc's ``Assistant:``). Streamed, the first sample is written as it is
    decoded and the others (decoded beside it, their pieces interleaved) when it ends."""
    batch = [text] * request.n
    if not request.stream:
        completions = generator.complete(batch, params)
        write("\n\n".join(c.text.removeprefix(" ") if strip_space else c.text for c in completions) + "\n")
        _say_if_unfinishable([c.finish_reason for c in completions])
        return
    samples, reasons = [""] * request.n, []
    for event in generator.stream(batch, params):
        piece = event.text.removeprefix(" ") if strip_space and not samples[event.index] else event.text
        samples[event.index] += piece
        reasons += [event.finish_reason] if event.finish_reason else []
        if event.index == 0:
            write(piece)
    for sample in samples[1:]:
        write("\n\n" + sample)
    write("\n")
    _say_if_unfinishable(reasons)


def _say_if_unfinishable(finish_reasons: list[str]) -> None:
    if "constraint" in finish_reasons:
        log.warning("%d of %d samples stopped where the grammar needs text no token of this model's vocabulary "
                    "holds (finish reason: constraint)", finish_reasons.count("constraint"), len(finish_reasons))


def prompt_lines(request: GenerateRequest):
    """The non-empty lines of ``request.lines``; ``\\n`` inside a line is a newline (:func:`~aigc.flags.unescape`)."""
    for line in request.lines:
        prompt = line.rstrip("\n")
        if prompt:
            yield unescape(prompt)
