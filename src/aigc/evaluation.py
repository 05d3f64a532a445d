"""Evaluation building blocks: how well a model predicts held-out data, and what its samples look like.

Each task (:mod:`aigc.tasks`) picks what to measure; this module holds the shared metrics and the report.

Metrics (all on the val split, which training never saw):

- loss: mean cross-entropy in nats per token, over non-overlapping windows of the context;
- perplexity: exp(loss), the effective number of equally likely next tokens;
- bits per byte: total nats / ln 2 / UTF-8 bytes of the scored text; independent of the tokenizer, so
  runs with different vocabularies compare;
- distinct-1/2: unique token n-grams / all n-grams over the samples (higher = more varied);
  repeated 4-gram rate: share of 4-grams in a sample that already occurred in it (degenerate loops);
- for code (``eval.task=code``): completions of held-out top-level function headers, the share that
  parses with ``ast`` and the share that compiles.

Writes ``eval/report.json``, ``eval/report.md`` and ``eval/loss.png``.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aigc.code_checks import compiles as code_compiles, parses as code_parses
from aigc.config import Config
from aigc.data.pairs import PairSampler, split_pairs, target_start
from aigc.data.shards import open_split
from aigc.errors import DataError
from aigc.files import write_json
from aigc.generate.beam import beam_params
from aigc.generate.sampling import SamplingParams, sampling_params
from aigc.generate.text import TextGenerator
from aigc.generate.translate import Translator

CODE_STOPS = ("\ndef ", "\nclass ", "\n@", "\nif __name__")
CODE_ROOM = 32  # tokens a code prompt leaves of the context, at least, for the function's body


@dataclass
class EvalResult:
    report: dict[str, Any]
    folder: Path

    def summary(self) -> str:
        r = self.report
        lines = [] if "loss" not in r else [
            f"val loss {r['loss']:.4f}, perplexity {r['perplexity']:.2f}"
            + (f", {r['bits_per_byte']:.3f} bits/byte" if "bits_per_byte" in r else "")
            + f" ({r['tokens_scored']:,} tokens)"]
        if "quantization" in r:
            lines.append(quantization_text(r["quantization"]))
        if "bleu" in r:
            lines.append(f"{r['split']} ({r['pairs']:,} pairs): BLEU {r['bleu']:.2f} (tokenize {r['bleu_tokenize']}), "
                         f"chrF {r['chrf']:.2f}, {r['sentences_per_s']:.1f} sentences/s")
        if "distinct_1" in r:
            lines.append(f"samples: distinct-1 {r['distinct_1']:.3f}, distinct-2 {r['distinct_2']:.3f}, "
                         f"repeated 4-grams {r['repeated_4gram_rate']:.3f}")
        if "code" in r:
            c = r["code"]
            lines.append(f"code: {c['parses']}/{c['completions']} completions parse ({c['syntax_valid_rate']:.0%}), "
                         f"{c['compile_rate']:.0%} compile")
            if "doctests" in c:
                d = c["doctests"]
                if not d["run"]:
                    lines.append(f"doctests: {d['with_doctests']} answers have them; {d['note']}")
                elif d["with_doctests"]:
                    lines.append(f"doctests: {d['passed']}/{d['with_doctests']} pass ({d['pass_rate']:.0%}, sandboxed)")
                else:
                    lines.append("doctests: none of the evaluated functions has doctests to run")
        if "bits_per_pixel" in r:
            lines.append(f"test bits/pixel {r['bits_per_pixel']:.3f}; {r['samples_per_s']:.1f} samples/s at guidance {r['guidance']:g}")
            if "classifier_real_accuracy" in r:
                lines.append(f"prompt adherence {r['adherence']:.1%} (classifier on real digits: {r['classifier_real_accuracy']:.1%})")
            if r.get("adherence_seen") is not None or r.get("adherence_heldout") is not None:
                lines.append(f"prompt adherence {r['adherence']:.1%}: seen combinations {r['adherence_seen']:.1%}, "
                             f"held-out combinations {r['adherence_heldout']:.1%}")
            lines.append(f"diversity {r['sample_diversity']:.3f}"
                         + (f" (real {r['real_diversity']:.3f})" if "real_diversity" in r else "")
                         + f"; {r['exact_training_copies']} exact training copies; nearest-training distance "
                         f"{r['nearest_training_distance']:.3f}"
                         + (f" (real test images {r['real_nearest_training_distance']:.3f})"
                            if "real_nearest_training_distance" in r else ""))
        if "mel_cepstral_distortion" in r:
            lines.append(f"test bits/audio token {r['bits_per_audio_token']:.3f}; {r['audio_seconds_per_s']:.1f} s of "
                         f"audio per second at guidance {r['guidance']:g}")
            if "adherence" in r:
                lines.append(f"prompt adherence {r['adherence']:.1%} (classifier on real clips: "
                             f"{r['classifier_real_accuracy']:.1%}); unseen word heard as "
                             f"{', '.join(r['unseen_heard_as'])}")
            floor, spread = r["real_mel_cepstral_distortion"], r["sample_diversity"]
            lines.append(f"mel-cepstral distortion {r['mel_cepstral_distortion']:.2f} dB"
                         + (f" (real vs real {floor:.2f})" if floor is not None else "")
                         + f"; duration error {r['duration_error_s']:.3f} s"
                         + (f"; diversity {spread:.2f} dB" if spread is not None else "")
                         + f"; {r['exact_training_copies']} exact training copies")
        lines.append(f"report: {self.folder / 'report.md'}")
        return "\n".join(lines)


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


DOCSTRING_PROMPT_CHARS = 240  # longer signature + docstring prompts would leave too little of a 128-token context


def function_headers(sources: list[str], limit: int, docstring: bool = False) -> list[str]:
    """Up to ``limit`` prompts from top-level functions in held-out code, spread over the files: every file's
    first function, then every file's second, and so on. A prompt is the one-line signature (``def f(...):``,
    decorators excluded) or, with ``docstring``, the signature and the docstring (HumanEval's prompts: the
    indentation and the intent are given), for functions with a docstring and code after it, at most
    ``DOCSTRING_PROMPT_CHARS`` long.

    The trailing newline is left off: BPE merges a newline with the next line's indentation, so a
    prompt ending in a bare newline token would be unlike anything seen in training.
    """
    per_file = [_top_level_headers(source, limit, docstring) for source in sources]
    spread = [header for rank in itertools.zip_longest(*per_file) for header in rank if header is not None]
    return spread[:limit]


def _top_level_headers(source: str, limit: int, docstring: bool) -> list[str]:
    """The prompts (see :func:`function_headers`) of the first ``limit`` top-level functions of ``source`` that
    have one (none if it does not parse)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines, headers = source.splitlines(), []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        header = "\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1])
        if not header.rstrip().endswith(":") or "\n" in header.strip():
            continue
        if docstring:
            if ast.get_docstring(node) is None or len(node.body) < 2:
                continue
            header = "\n".join(lines[node.lineno - 1 : node.body[0].end_lineno])
            if len(header) > DOCSTRING_PROMPT_CHARS:
                continue
        headers.append(header.rstrip())
        if len(headers) >= limit:
            break
    return headers


def code_validity(headers: list[str], completions: list[str]) -> dict[str, Any]:
    """How many of the programs ``header + completion`` parse, and how many also compile (code_checks' rules)."""
    programs = [header + completion for header, completion in zip(headers, completions)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes in generated strings
        parsed = [program for program in programs if code_parses(program)]
        compiles = sum(code_compiles(program) for program in parsed)
    parses, n = len(parsed), len(headers)
    return {"completions": n, "parses": parses, "compiles": compiles,
            "syntax_valid_rate": parses / n if n else 0.0, "compile_rate": compiles / n if n else 0.0}


def _documents(tokens: np.ndarray, eot: int, decode, limit: int) -> list[str]:
    """The first ``limit`` documents of a split, as text."""
    ends = np.flatnonzero(tokens == eot)[:limit]
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [decode(tokens[s:e].tolist()) for s, e in zip(starts, ends)]


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


def _markdown(report: dict[str, Any], plotted: bool, samples: list[str]) -> str:
    lines = [f"# Evaluation of {report['checkpoint']}", "", "| metric | value |", "|---|---|"]
    for key in ("loss", "perplexity", "bits_per_byte", "tokens_scored", "distinct_1", "distinct_2", "repeated_4gram_rate",
                "bleu", "chrf", "pairs", "sentences_per_s", "bits_per_pixel", "pixels_scored", "guidance", "adherence",
                "classifier_real_accuracy", "adherence_seen", "adherence_heldout", "sample_diversity", "real_diversity",
                "exact_training_copies", "nearest_training_distance", "real_nearest_training_distance", "samples_per_s",
                "bits_per_audio_token", "audio_tokens_scored", "samples_scored", "mel_cepstral_distortion",
                "real_mel_cepstral_distortion", "duration_error_s", "audio_seconds_per_s"):
        if report.get(key) is not None:
            value = report[key]
            lines.append(f"| {key} | {value:,.4f} |" if isinstance(value, float) else f"| {key} | {value:,} |")
    if "quantization" in report:
        lines.append(f"| quantization | {quantization_text(report['quantization'])} |")
    if "data" in report:
        lines.append(f"| data | {', '.join(report['data'])} |")
    if "scored" in report:
        lines.append(f"| scored | {report['scored']} |")
    if "code" in report:
        for key, value in report["code"].items():
            if key == "doctests":
                shown = {k: v for k, v in value.items() if k != "reasons"}
                lines.append("| code doctests | " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                              for k, v in shown.items()) + " |")
                continue
            lines.append(f"| code {key} | {value:.3f} |" if isinstance(value, float) else f"| code {key} | {value} |")
    if plotted:
        lines += ["", "![loss curve](loss.png)"]
    lines += ["", "## Samples", "", *samples]
    return "\n".join(lines)


def bleu_tokenizer(references: list[str]) -> str:
    """sacrebleu's ``zh`` tokenizer when the references are mostly CJK characters, else its default ``13a``."""
    text = "".join(references)
    cjk = sum("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for ch in text)
    return "zh" if text and cjk / len(text) > 0.3 else "13a"


def evaluate_pairs(generator: Translator, run_dir: Path, manifest: dict, config: Config) -> dict[str, Any]:
    """Val loss of the seq2seq model, and BLEU / chrF of its translations of the test split (val if no test)."""
    import sacrebleu

    eot = target_start(manifest)
    data_dir = run_dir / "data"

    def pairs(split: str):
        return split_pairs(data_dir, manifest, split)

    val = pairs("val")
    sampler = PairSampler(val, eot, config.model.block_size, min(16, len(val)), 1, config.seed, split="val")
    total = count = 0.0
    with torch.inference_mode():
        for (src, src_mask, tgt_in), tgt_out in sampler.eval_batches(max(1, min(len(val) // 16, 50))):
            nll, scored = summed_nll(generator.model(src, src_mask, tgt_in), tgt_out)
            total, count = total + nll, count + scored
    split = "test" if manifest["splits"].get("test.src", {}).get("documents") else "val"
    chosen = pairs(split)[: config.eval.max_pairs]
    sources = [generator.decode(s[:-1].tolist()) for s, _ in chosen]
    references = [generator.decode_target(t[:-1].tolist()) for _, t in chosen]
    beam = beam_params(config.generate, config.model.block_size)
    params = SamplingParams(max_new_tokens=config.model.block_size, temperature=0)
    started = time.perf_counter()
    hypotheses = [out[0] for i in range(0, len(sources), 64) for out in generator.translate(sources[i : i + 64], params, beam)]
    seconds = time.perf_counter() - started
    tokenize = bleu_tokenizer(references)
    report = {
        "loss": total / count, "perplexity": math.exp(total / count), "tokens_scored": int(count),
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "bleu_tokenize": tokenize, "split": split, "pairs": len(chosen), "sentences_per_s": len(chosen) / seconds,
    }
    report["samples"] = [{"source": src, "reference": ref, "translation": hyp}
                         for src, ref, hyp in list(zip(sources, references, hypotheses))[:10]]
    return report


def evaluate_documents(generator: TextGenerator, run_dir: Path, manifest: dict, config: Config) -> dict[str, Any]:
    """Loss, perplexity and bits per byte on the val split; samples (and code validity for ``eval.task=code``)."""
    val = open_split(run_dir / "data", "val", manifest)
    nll, count, targets = score(generator.model, val, config.model.block_size, config.eval.max_tokens)
    scored_bytes = len(generator.decode(targets.tolist()).encode("utf-8"))
    loss = nll / count
    report: dict[str, Any] = {
        "loss": loss,
        "perplexity": math.exp(loss), "bits_per_byte": nll / math.log(2) / max(scored_bytes, 1),
        "tokens_scored": count, "bytes_scored": scored_bytes,
    }
    ec = config.eval
    params = sampling_params(config.generate, seed=config.seed,
                             stop=CODE_STOPS if ec.task == "code" else tuple(config.generate.stop))
    eot = manifest["tokenizer"]["eot_id"]
    documents = _documents(np.asarray(val), eot, generator.decode, limit=200)
    if ec.task == "code":
        candidates = function_headers(documents, 4 * ec.samples, docstring=ec.code_prompt == "docstring")
        room = config.model.block_size - CODE_ROOM  # a prompt that fills the context leaves no function to write
        prompts = [p for p in candidates
                   if len(generator.tokenizer.encode(p, add_special_tokens=False).ids) <= room][: ec.samples]
    else:
        prompts = [doc[: max(1, min(len(doc) // 2, 32))] for doc in documents if doc.strip()][: ec.samples]
    samples: list[tuple[str, str]] = []
    if prompts and ec.samples:
        completions = generator.complete(prompts, params)
        samples = [(p, c.text) for p, c in zip(prompts, completions)]
        report |= diversity([c.token_ids for c in completions])
        if ec.task == "code":  # a completion cut by the token limit is judged up to its last whole line
            texts = [c.text if c.finish_reason == "stop" else c.text[: c.text.rfind("\n") + 1] for c in completions]
            report["code"] = code_validity(prompts, texts)
    report["samples"] = [{"prompt": p, "completion": c} for p, c in samples]
    return report




def write_report(run_dir: Path, report: dict[str, Any], samples: list[str], folder: Path | None = None) -> EvalResult:
    """Write ``report.json``, ``report.md`` (``samples``: its markdown lines) and ``loss.png`` (the run's
    training curve) into ``folder``, by default ``<run>/eval``."""
    folder = folder or run_dir / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    plotted = plot_losses(run_dir / "metrics.jsonl", folder / "loss.png")
    write_json(folder / "report.json", report)
    (folder / "report.md").write_text(_markdown(report, plotted, samples), encoding="utf-8")
    return EvalResult(report, folder)
