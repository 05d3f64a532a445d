"""Evaluation of a fine-tuned chat model on held-out conversations.

- loss: mean cross-entropy over the held-out assistant tokens only (what the fine-tuning optimises),
  each conversation scored alone through the packed, boundary-respecting batches;
- samples: the model's answer to the last user turn of held-out conversations, beside the reference;
- code (``eval.task=code``, e.g. the ``stdlib_functions`` corpus): the share of answers whose code
  parses and compiles, and with ``eval.execute=true`` the share of answers that pass the doctests of
  the reference function's docstring, each run in a sandboxed subprocess (:mod:`aigc.code_checks`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from aigc.code_checks import compiles, defines_function, extract_code, run_many
from aigc.config import Config
from aigc.data.packing import PackedSampler
from aigc.data.shards import open_split
from aigc.errors import DataError
from aigc.evaluation import diversity, summed_nll
from aigc.generate.sampling import sampling_params
from aigc.generate.text import TextGenerator
from aigc.tasks.chat.masked import HELD_OUT
from aigc.tasks.chat.stdlib_functions import functions_in

EVAL_ROWS = 4  # packed rows per forward pass when scoring


def split_sampler(data_dir: Path, manifest: dict, split: str, seq_len: int, batch_size: int, seed: int,
                  grad_accum: int = 1, rank: int = 0, world: int = 1) -> PackedSampler:
    """A :class:`PackedSampler` over one prepared split (ids, loss mask and conversation lengths)."""
    return PackedSampler(open_split(data_dir, split, manifest), open_split(data_dir, f"{split}.mask", manifest),
                         open_split(data_dir, f"{split}.lengths", manifest), seq_len, batch_size, grad_accum, seed,
                         rank, world, split)


@torch.inference_mode()
def assistant_loss(model, sampler: PackedSampler, max_tokens: int) -> tuple[float, int]:
    """Summed NLL (nats) and count of held-out assistant tokens, until about ``max_tokens`` are scored."""
    total, count = 0.0, 0
    for inputs, targets in sampler.eval_batches(None):
        nll, scored = summed_nll(model(*inputs), targets)
        total, count = total + nll, count + scored
        if count >= max_tokens:
            break
    if count == 0:
        raise DataError("the held-out conversations have no assistant tokens to score")
    return total, count


def held_out_conversations(data_dir: Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` held-out conversations (messages and source)."""
    path = data_dir / HELD_OUT
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(limit), handle)]


def evaluate_conversations(generator: TextGenerator, data_root: Path, manifest: dict, config: Config) -> dict[str, Any]:
    """The report's metrics and samples for a chat run (see the module docstring)."""
    data_dir = data_root / "data"
    if manifest["splits"]["val"]["documents"] == 0:
        raise DataError(f"{data_dir} holds no held-out conversations to evaluate; raise data.val_fraction or name "
                        "data.val_paths")
    sampler = split_sampler(data_dir, manifest, "val", config.seq_len, EVAL_ROWS, config.seed)
    nll, count = assistant_loss(generator.model, sampler, config.eval.max_tokens)
    report: dict[str, Any] = {"loss": nll / count, "perplexity": math.exp(nll / count), "tokens_scored": count,
                              "scored": "held-out assistant tokens"}
    return report | held_out_answers(generator, data_dir, config)


def held_out_answers(generator: TextGenerator, data_dir: Path, config: Config) -> dict[str, Any]:
    """The model's answers to the last user turn of up to ``eval.samples`` held-out conversations, beside the
    references; their diversity, and with ``eval.task=code`` their code checks."""
    report: dict[str, Any] = {}
    conversations = held_out_conversations(data_dir, config.eval.samples)
    prompts, references = [], []
    for conversation in conversations:
        messages = conversation["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        text, stops = generator.chat_prompt(messages[:last])
        prompts.append((text, stops, messages[last - 1]["content"] if last else ""))
        references.append(messages[last]["content"])
    samples = []
    if prompts:
        params = sampling_params(config.generate, seed=config.seed,
                                 stop=tuple(config.generate.stop) + tuple(prompts[0][1]))
        completions = generator.complete([p[0] for p in prompts], params)
        report |= diversity([c.token_ids for c in completions])
        samples = [{"prompt": p[2], "reference": r, "answer": c.text}
                   for p, r, c in zip(prompts, references, completions)]
        if config.eval.task == "code":
            report["code"] = code_report([s["answer"] for s in samples], references, config.eval.execute)
    report["samples"] = samples
    return report


def code_report(answers: list[str], references: list[str], execute: bool) -> dict[str, Any]:
    """Shares of the answers whose code defines a function that parses and compiles; with ``execute``, their pass
    rate on the references' doctests."""
    codes = [extract_code(a) for a in answers]
    n = len(codes)
    functions = [defines_function(c) for c in codes]  # an answer that is no function (say, empty) does not count
    parsed = sum(functions)
    compiled = sum(f and compiles(c) for f, c in zip(functions, codes))
    report: dict[str, Any] = {"completions": n, "parses": parsed, "compiles": compiled,
                              "syntax_valid_rate": parsed / n if n else 0.0, "compile_rate": compiled / n if n else 0.0}
    jobs, own = [], []
    for code, reference in zip(codes, references):
        found = functions_in(reference)
        if found and found[0].doctests:
            jobs.append((code, found[0].doctests, found[0].name))
            own.append((reference, found[0].doctests, found[0].name))
    if not execute:
        report["doctests"] = {"with_doctests": len(jobs), "run": False,
                              "note": "not run: set eval.execute=true to run the generated code in a sandbox"}
        return report
    # A reference whose doctests need its module (imports, private helpers) fails them alone too: only the
    # functions whose own source passes its doctests by itself can tell a right answer from a wrong one.
    usable = [job for job, outcome in zip(jobs, run_many(own)) if outcome.passed]
    outcomes = run_many(usable)
    passed = sum(o.passed for o in outcomes)
    report["doctests"] = {"with_doctests": len(usable), "run": True, "passed": passed,
                          "pass_rate": passed / len(usable) if usable else None,
                          "needing_their_module": len(jobs) - len(usable), "reasons": [o.reason for o in outcomes]}
    return report
