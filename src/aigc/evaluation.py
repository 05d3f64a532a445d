"""Evaluation building blocks every kind of run shares: held-out loss, sample diversity and the report.

Each kind (:mod:`aigc.tasks`) picks what to measure and says how its metrics read; this module holds:

- loss: mean cross-entropy in nats per token (:func:`summed_nll`, the one held-out loss), over
  non-overlapping windows of the context for a stream of documents (:func:`score`);
- perplexity: exp(loss), the effective number of equally likely next tokens;
- distinct-1/2: unique token n-grams / all n-grams over the samples (higher = more varied);
  repeated 4-gram rate: share of 4-grams in a sample that already occurred in it (degenerate loops);
- the report: ``eval/report.json``, ``eval/report.md`` (the kind's rows) and ``eval/loss.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aigc.errors import DataError
from aigc.files import write_json


@dataclass
class EvalResult:
    """A written evaluation: the report, the folder it is in, and what its kind of run says of its metrics."""

    report: dict[str, Any]
    folder: Path
    lines: list[str]  # the kind's summary lines (Task.summary_lines)

    def summary(self) -> str:
        """What ``aigc eval`` prints: the held-out loss where there is one, the kind's lines, the report's path."""
        r = self.report
        lines = [] if "loss" not in r else [
            f"val loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f}"
            + (f", {r['bits_per_byte']:.3f} bits/byte" if "bits_per_byte" in r else "")
            + f" ({r['tokens_scored']:,} tokens)"]
        if "quantization" in r:
            lines.append(quantization_text(r["quantization"]))
        return "\n".join([*lines, *self.lines, f"report: {self.folder / 'report.md'}"])


def quantization_text(q: dict[str, Any]) -> str:
    """One line on what quantizing cost: ``report["quantization"]`` as the CLI summary and report.md show it."""
    return (f"{q['mode']} weights: perplexity {q['perplexity_change_percent']:+.2f}% against the stored weights "
            f"(loss {q['loss_stored_weights']:.4f} -> {q['loss']:.4f})")


def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """The held-out loss every kind reports, in one place: the summed negative log-likelihood (nats) of ``targets``
    (...,) under ``logits`` (..., V), in float32, and how many targets were scored (those of -1 are not)."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                          reduction="sum")
    return nll.item(), int((targets >= 0).sum())


SCORE_WINDOW = 2048  # at most this many tokens of context per scored window
SCORE_BATCH_TOKENS = 2048  # tokens per forward pass: the logits of an imported 150k vocabulary stay ~1 GB


@torch.inference_mode()
def score(model, tokens: np.ndarray, block: int, max_tokens: int) -> tuple[float, int, np.ndarray]:
    """Summed NLL (nats) over the first ``min(len - 1, max_tokens)`` targets, every one of them: consecutive
    non-overlapping windows of ``min(block, SCORE_WINDOW)`` tokens, batched to ``SCORE_BATCH_TOKENS``, then
    the rest as one shorter window. Returns the NLL, the number of targets and the targets themselves.

    An imported model's context can be 8k to 128k tokens; scoring with windows that long would hold
    gigabytes of logits, so its perplexity is measured with 2,048 tokens of context at most.
    """
    usable = min(len(tokens) - 1, max_tokens)
    if usable < 1:
        raise DataError(f"the held-out data has {len(tokens):,} tokens; scoring needs at least 2")
    block = min(block, SCORE_WINDOW)
    batch = max(1, SCORE_BATCH_TOKENS // block)
    whole = usable // block * block
    windows = [(torch.from_numpy(tokens[:whole].astype(np.int64)).view(-1, block),
                torch.from_numpy(tokens[1 : whole + 1].astype(np.int64)).view(-1, block))]
    if usable > whole:  # the tail: (1, usable - whole)
        windows.append((torch.from_numpy(tokens[whole:usable].astype(np.int64))[None],
                        torch.from_numpy(tokens[whole + 1 : usable + 1].astype(np.int64))[None]))
    total = 0.0
    for inputs, targets in windows:
        for start in range(0, len(inputs), batch):
            total += summed_nll(model(inputs[start : start + batch]), targets[start : start + batch])[0]
    return total, usable, tokens[1 : usable + 1]


def diversity(samples: list[list[int]]) -> dict[str, float]:
    """distinct-1, distinct-2 over all samples; repeated 4-gram rate within samples."""
    def ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
        return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]

    result = {}
    for n in (1, 2):
        grams = [g for ids in samples for g in ngrams(ids, n)]
        result[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    repeated = total = 0
    for ids in samples:
        seen: set[tuple[int, ...]] = set()
        for gram in ngrams(ids, 4):
            repeated += gram in seen
            total += 1
            seen.add(gram)
    result["repeated_4gram_rate"] = repeated / total if total else 0.0
    return result


def plot_losses(metrics_path: Path, out: Path) -> bool:
    """Train and val loss against step, from ``metrics.jsonl``; False when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics_path.is_file():
        return False
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return False
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    for points, label in ((train, "train"), (val, "val")):
        if points:
            axes.plot(*zip(*points), label=label, marker="o" if label == "val" else None, markersize=3)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (nats/token)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return True


def _markdown(report: dict[str, Any], plotted: bool, rows: list[tuple[str, Any]], samples: list[str]) -> str:
    """report.md: the kind's metric ``rows`` (name, value), what every report may hold, the curve, the samples."""
    lines = [f"# Evaluation of {report['checkpoint']}", "", "| metric | value |", "|---|---|"]
    for key, value in rows:
        lines.append(f"| {key} | {value:,.4f} |" if isinstance(value, float) else f"| {key} | {value:,} |"
                     if isinstance(value, int) else f"| {key} | {value} |")
    if "quantization" in report:
        lines.append(f"| quantization | {quantization_text(report['quantization'])} |")
    if "data" in report:
        lines.append(f"| data | {', '.join(report['data'])} |")
    if "scored" in report:
        lines.append(f"| scored | {report['scored']} |")
    if plotted:
        lines += ["", "![loss curve](loss.png)"]
    lines += ["", "## Samples", "", *samples]
    return "\n".join(lines)


def write_report(run_dir: Path, report: dict[str, Any], rows: list[tuple[str, Any]], lines: list[str],
                 samples: list[str], folder: Path | None = None) -> EvalResult:
    """Write ``report.json``, ``report.md`` and ``loss.png`` (the run's training curve) into ``folder``, by default
    ``<run>/eval``. ``rows``, ``lines`` and ``samples``: what the run's kind shows of its metrics in the table, in the
    printed summary, and of its samples (markdown lines)."""
    folder = folder or run_dir / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    plotted = plot_losses(run_dir / "metrics.jsonl", folder / "loss.png")
    write_json(folder / "report.json", report)
    (folder / "report.md").write_text(_markdown(report, plotted, rows, samples), encoding="utf-8")
    return EvalResult(report, folder, lines)
