"""Conversations: supervised fine-tuning of a GPT on the assistant's turns, rendered with its chat template."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aigc.config import Config, GenerateConfig
from aigc.data.collect import CollectResult, collect_files
from aigc.data.prepare import PrepareResult
from aigc.errors import TrainingError
from aigc.generate.sampling import sampling_params
from aigc.generate.text import TextGenerator
from aigc.tasks.base import GenerateRequest
from aigc.tasks.chat.conversations import prepare_conversations, read_conversations
from aigc.tasks.chat.evaluation import assistant_loss, evaluate_conversations, split_sampler
from aigc.tasks.text.evaluation import SAMPLE_KEYS
from aigc.tasks.text.task import TextGPTTask, parse_rate_needs, prompt_lines, write_samples

if TYPE_CHECKING:
    pass


class ChatTask(TextGPTTask):
    name, describes = "chat", "conversations"
    report_keys = ("loss", "perplexity", "tokens_scored", *SAMPLE_KEYS)

    def metrics(self, config: Config) -> dict[str, str | None]:
        return {"val_loss": None, "parse_rate": parse_rate_needs(config)}

    def collect(self, config: Config) -> CollectResult:
        return collect_files(config, read_conversations)

    def prepare(self, config: Config) -> PrepareResult:
        return prepare_conversations(config, self.prepared_settings(config))

    def prepared_settings(self, config: Config) -> dict[str, Any]:
        return super().prepared_settings(config) | {"seq_len": config.seq_len}  # longer conversations are left out

    def model_config(self, config: Config, manifest: dict) -> Config:
        if config.model.init is None:
            raise TrainingError(f"{self.name} runs fine-tune an existing model: set model.init=RUN_OR_HF_DIR")
        return super().model_config(config, manifest)

    def samplers(self, config: Config, manifest: dict, rank: int, world: int) -> tuple[Any, Any | None]:
        data_dir, tc = config.run_dir / "data", config.train
        train = split_sampler(data_dir, manifest, "train", config.seq_len, tc.batch_size, config.seed, tc.grad_accum,
                              rank, world)
        has_val = manifest["splits"]["val"]["documents"] > 0
        val = (split_sampler(data_dir, manifest, "val", config.seq_len, tc.batch_size, config.seed, world, rank, world)
               if has_val else None)
        return train, val

    def evaluate(self, generator: TextGenerator, run_dir: Path, manifest: dict, config: Config,
                 log: Callable[[str], None]) -> dict[str, Any]:
        return evaluate_conversations(generator, run_dir, manifest, config)

    def held_out_loss(self, generator: TextGenerator, data_root: Path, manifest: dict, config: Config) -> float:
        sampler = split_sampler(data_root / "data", manifest, "val", config.seq_len, 4, config.seed)
        nll, count = assistant_loss(generator.model, sampler, config.eval.max_tokens)
        return nll / count


    def sample_markdown(self, samples: list[dict[str, Any]]) -> list[str]:
        return [line for s in samples for line in (
            f"**user:** {s['prompt']}", "", "**model:**", "```", s["answer"], "```", "", "**reference:**", "```",
            s["reference"], "```", "")]

    def sample_text(self, sample: dict[str, Any], eval_dir: Path) -> str:
        return f"User: {sample['prompt']}\nModel: {sample['answer']}"

    def generate(self, generator: TextGenerator, request: GenerateRequest, settings: GenerateConfig,
                 write: Callable[[str], None]) -> None:
        """Answer ``request.prompt`` (or every prompt line) as a user's message, through the model's chat
        template; answers to one prompt are separated by a blank line. aigc's template puts a space after
        ``Assistant:`` that the model learns to say first: it is not part of the answer."""
        prompts = [request.prompt] if request.prompt is not None else list(prompt_lines(request))
        for prompt in prompts:
            text, stops = generator.chat_prompt([{"role": "user", "content": prompt}])
            params = sampling_params(settings, seed=request.seed, truncate_prompt=request.truncate,
                                     stop=tuple(settings.stop) + tuple(stops), grammar=request.grammar)
            write_samples(generator, text, request, params, write, strip_space=True)
