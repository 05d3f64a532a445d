"""A text run's evaluation: loss, perplexity and bits per byte on the val split, samples, and for code
(``eval.task=code``) completions of held-out function headers, the share that parses and compiles."""

from __future__ import annotations

import ast
import itertools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from aigc.code_checks import compiles as code_compiles
from aigc.code_checks import parses as code_parses
from aigc.config import Config
from aigc.data.shards import open_split
from aigc.errors import AigcError
from aigc.evaluation import diversity, score
from aigc.generate.sampling import sampling_params
from aigc.generate.text import TextGenerator

CODE_STOPS = ("\ndef ", "\nclass ", "\n@", "\nif __name__")
CODE_ROOM = 32  # tokens a code prompt leaves of the context, at least, for the function's body


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


SAMPLE_KEYS = ("distinct_1", "distinct_2", "repeated_4gram_rate")


def sample_lines(report: dict[str, Any]) -> list[str]:
    """The summary lines of a text or chat report's samples: their diversity, and the code checks."""
    lines = [] if "distinct_1" not in report else [
        f"samples: distinct-1 {report['distinct_1']:.3f}, distinct-2 {report['distinct_2']:.3f}, "
        f"repeated 4-grams {report['repeated_4gram_rate']:.3f}"]
    if "code" in report:
        c = report["code"]
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
    return lines


def code_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """report.md's rows of the code checks (``code parses``, ``code doctests``, ...), where the report has them."""
    rows: list[tuple[str, Any]] = []
    for key, value in report.get("code", {}).items():
        if key == "doctests":
            shown = {k: v for k, v in value.items() if k != "reasons"}
            rows.append(("code doctests", ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                    for k, v in shown.items())))
        else:
            rows.append((f"code {key}", f"{value:.3f}" if isinstance(value, float) else value))
    return rows


def parse_rate(report: dict[str, Any]) -> float:
    """``aigc tune``'s parse_rate: the share of completions of held-out functions that parse."""
    if "code" not in report:
        raise AigcError("no held-out function fitted the evaluation (too few in the val split, or "
                        "model.block_size too short for a prompt and its completion): no parse rate")
    return report["code"]["syntax_valid_rate"]
