"""Preference pairs: DPO or ORPO on a GPT that already answers prompts (own, imported, or fine-tuned)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aigc.checkpoint import load_checkpoint
from aigc.config import Config
from aigc.data.collect import CollectResult, collect_files
from aigc.data.prepare import PrepareResult
from aigc.generate.text import TextGenerator
from aigc.tasks.chat.task import ChatTask
from aigc.tasks.preference.evaluation import EVAL_PAIRS, evaluate_preferences, pair_report, split_pairs
from aigc.tasks.preference.objective import PreferenceObjective
from aigc.tasks.preference.preferences import prepare_preferences, read_pairs
from aigc.tasks.text.evaluation import SAMPLE_KEYS, code_rows


class PreferenceTask(ChatTask):
    name, describes = "preference", "preference pairs"
    report_keys = ("loss", "perplexity", "tokens_scored", "reward_accuracy", "reward_margin", *SAMPLE_KEYS)

    def metrics(self, config: Config) -> dict[str, str | None]:
        return super().metrics(config) | {"reward_accuracy": None}

    def collect(self, config: Config) -> CollectResult:
        return collect_files(config, read_pairs)

    def prepare(self, config: Config) -> PrepareResult:
        return prepare_preferences(config, self.prepared_settings(config))

    def samplers(self, config: Config, manifest: dict, rank: int, world: int) -> tuple[Any, Any | None]:
        data_dir, tc, pairs = config.run_dir / "data", config.train, manifest["preference"]["pairs"]
        train = split_pairs(data_dir, manifest, "train", tc.batch_size, config.seed, tc.grad_accum, rank, world)
        val = (split_pairs(data_dir, manifest, "val", min(tc.batch_size, pairs["val"]), config.seed, world, rank, world)
               if pairs["val"] else None)
        return train, val

    def objective(self, config: Config, model: nn.Module, device: torch.device) -> PreferenceObjective:
        reference = None
        if config.train.objective == "dpo" and not config.train.lora.enabled:  # LoRA's reference: the adapters off
            reference = load_checkpoint(config.model.init).load_model(str(device))
            reference.requires_grad_(False)
        return PreferenceObjective(config.train, model, reference)

    def evaluate(self, generator: TextGenerator, run_dir: Path, manifest: dict, config: Config,
                 log: Callable[[str], None]) -> dict[str, Any]:
        return evaluate_preferences(generator, run_dir, manifest, config)

    def held_out_loss(self, generator: TextGenerator, data_root: Path, manifest: dict, config: Config) -> float:
        sampler = split_pairs(data_root / "data", manifest, "val", EVAL_PAIRS, config.seed)
        return pair_report(generator.model, None, sampler, config.eval.max_tokens)["loss"]

    def report_rows(self, report: dict[str, Any]) -> list[tuple[str, Any]]:
        before = [(f"{name} (before: model.init)", value) for name, value in code_rows(report.get("before", {}))]
        return super().report_rows(report) + before

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        lines = [f"reward accuracy {report['reward_accuracy']:.1%} on {report['pairs_scored']} held-out pairs "
                 f"(margin {report['reward_margin']:.3f})"]
        if "code" in report and "code" in report.get("before", {}):
            lines.append(f"held-out answers that parse: {report['code']['syntax_valid_rate']:.1%}, "
                         f"{report['before']['code']['syntax_valid_rate']:.1%} before (model.init)")
        return lines + super().summary_lines(report)
