"""Evaluation of a preference-tuned model on held-out pairs and prompts.

- the pairs: TRL's statistics over the held-out pairs (reward accuracy: the share whose chosen answer earns the
  higher implicit reward; the mean margin; each answer's mean log-probability), against the run's reference
  (``model.init``; ORPO's rewards need none), and the loss of the chosen answers' tokens (nats per token);
- the answers: as for a chat run, the model's answer to held-out prompts beside the chosen one, and with
  ``eval.task=code`` whether the code parses (:func:`aigc.tasks.chat.evaluation.held_out_answers`); then the same
  checks of the starting model's answers to the same prompts with the same sampling (``before``), so one report
  says what preference tuning changed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aigc.checkpoint import load_checkpoint
from aigc.config import Config
from aigc.data.shards import open_split
from aigc.errors import DataError
from aigc.generate.text import TextGenerator
from aigc.tasks.chat.evaluation import held_out_answers
from aigc.tasks.preference.objective import PreferenceObjective, answer_logps
from aigc.tasks.preference.sampler import PreferenceSampler

EVAL_PAIRS = 4  # pairs per forward pass


def split_pairs(data_dir: Path, manifest: dict, split: str, batch_size: int, seed: int, grad_accum: int = 1,
                rank: int = 0, world: int = 1) -> PreferenceSampler:
    """A :class:`PreferenceSampler` over one prepared split (ids, loss mask and the pairs' lengths)."""
    return PreferenceSampler(open_split(data_dir, split, manifest), open_split(data_dir, f"{split}.mask", manifest),
                             open_split(data_dir, f"{split}.lengths", manifest), batch_size, grad_accum, seed, rank,
                             world, split)


@torch.inference_mode()
def pair_report(model: nn.Module, objective: PreferenceObjective | None, sampler: PreferenceSampler,
                max_tokens: int) -> dict[str, Any]:
    """The chosen answers' loss over held-out pairs and, with ``objective``, TRL's reward statistics of them, until
    about ``max_tokens`` chosen tokens are scored; one forward pass of the model per batch."""
    sums: dict[str, float] = {}
    pairs, nll, tokens = 0, 0.0, 0
    for (ids,), targets in sampler.eval_batches(None):
        logps, counts = answer_logps(model(ids), targets)
        count = targets.shape[0] // 2
        if objective is not None:
            for name, value in objective.score(logps, counts, model, [ids], targets)[1].items():
                sums[name] = sums.get(name, 0.0) + value * count
        nll, tokens, pairs = nll - float(logps[:count].sum()), tokens + int(counts[:count].sum()), pairs + count
        if tokens >= max_tokens:
            break
    report = {"loss": nll / tokens, "perplexity": math.exp(nll / tokens), "tokens_scored": tokens,
              "scored": "held-out chosen answers' tokens", "pairs_scored": pairs}
    if objective is not None:
        means = {name: value / pairs for name, value in sums.items()}
        report |= {"reward_accuracy": means["rewards/accuracies"], "reward_margin": means["rewards/margins"],
                   "rewards": means}
    return report


def evaluate_preferences(generator: TextGenerator, data_root: Path, manifest: dict, config: Config) -> dict[str, Any]:
    """The report's metrics and samples for a preference run (see the module docstring)."""
    data_dir = data_root / "data"
    if manifest["preference"]["pairs"]["val"] == 0:
        raise DataError(f"{data_dir} holds no held-out pairs to evaluate; raise data.val_fraction or name "
                        "data.val_paths")
    device = str(next(generator.model.parameters()).device)
    start = load_checkpoint(config.model.init)
    reference = start.load_model(device) if config.train.objective == "dpo" else None
    sampler = split_pairs(data_dir, manifest, "val", EVAL_PAIRS, config.seed)
    objective = PreferenceObjective(config.train, generator.model, reference)
    report = pair_report(generator.model, objective, sampler, config.eval.max_tokens)
    report |= held_out_answers(generator, data_dir, config)
    before = held_out_answers(TextGenerator.from_checkpoint(start, device), data_dir, config)
    report["before"] = {key: value for key, value in before.items() if key != "samples"}
    return report
