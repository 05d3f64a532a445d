"""Translation (any source/target pairs) with the encoder-decoder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from aigc.checkpoint import Checkpoint
from aigc.config import Config, GenerateConfig
from aigc.data.collect import CollectResult, collect_files
from aigc.data.pairs import PairSampler, read_pairs, split_pairs, target_start
from aigc.data.prepare import PrepareResult, prepare_pairs
from aigc.generate.sampling import sampling_params
from aigc.tasks.base import GenerateRequest, Task
from aigc.tasks.pairs.evaluation import evaluate_pairs
from aigc.tasks.pairs.translator import Translator, beam_params

BATCH = 32  # source lines translated together by aigc generate

if TYPE_CHECKING:
    from aigc.serve.workers import ServedModel


class PairsTask(Task):
    name, model_kind, describes = "pairs", "seq2seq", "source/target pairs"
    report_keys = ("loss", "perplexity", "tokens_scored", "bleu", "chrf", "pairs", "sentences_per_s")

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        r = report
        return [f"{r['split']} ({r['pairs']:,} pairs): BLEU {r['bleu']:.2f} (tokenize {r['bleu_tokenize']}), "
                f"chrF {r['chrf']:.2f}, {r['sentences_per_s']:.1f} sentences/s"]

    def metrics(self, config: Config) -> dict[str, str | None]:
        return {"val_loss": None, "bleu": None, "chrf": None}

    def collect(self, config: Config) -> CollectResult:
        return collect_files(config, read_pairs)

    def prepare(self, config: Config) -> PrepareResult:
        return prepare_pairs(config)

    def samplers(self, config: Config, manifest: dict, rank: int, world: int) -> tuple[Any, Any | None]:
        tc, data_dir, block, eot = config.train, config.run_dir / "data", config.model.block_size, target_start(manifest)
        train = PairSampler(split_pairs(data_dir, manifest, "train"), eot, block, tc.batch_size, tc.grad_accum,
                            config.seed, rank, world)
        val_pairs = split_pairs(data_dir, manifest, "val")
        val = (PairSampler(val_pairs, eot, block, tc.batch_size, world, config.seed, rank, world, "val")
               if len(val_pairs) >= tc.batch_size else None)
        return train, val

    def generator(self, checkpoint: Checkpoint, device: str = "cpu", base: nn.Module | None = None) -> Translator:
        return Translator.from_checkpoint(checkpoint, device)

    def served_model(self) -> type[ServedModel]:
        from aigc.tasks.pairs.served import TranslationModel

        return TranslationModel

    def evaluate(self, generator: Translator, run_dir: Path, manifest: dict, config: Config,
                 log: Callable[[str], None]) -> dict[str, Any]:
        return evaluate_pairs(generator, run_dir, manifest, config)

    def sample_markdown(self, samples: list[dict[str, Any]]) -> list[str]:
        rows = ("| " + " | ".join(s[key].replace("|", "\\|") for key in ("source", "reference", "translation")) + " |"
                for s in samples)
        return ["| source | reference | model |", "|---|---|---|", *rows]

    def sample_text(self, sample: dict[str, Any], eval_dir: Path) -> str:
        return f"{sample['source']}\n=> {sample['translation']}\n(reference: {sample['reference']})"

    def generate(self, generator: Translator, request: GenerateRequest, settings: GenerateConfig,
                 write: Callable[[str], None]) -> None:
        """Translate ``request.prompt``, or every input line in batches: one output line per input line
        (blank in, blank out) so the output lines up with the input; ``n`` outputs of a line are tab-separated."""
        params = sampling_params(settings, seed=request.seed)
        beam = beam_params(settings, settings.max_new_tokens, n_best=request.n)
        lines = [request.prompt] if request.prompt is not None else [line.rstrip("\n") for line in request.lines]
        for start in range(0, len(lines), BATCH):
            chunk = lines[start : start + BATCH]
            wanted = [line for line in chunk if line.strip()] if request.prompt is None else chunk
            outputs = iter(generator.translate(wanted, params, beam, n=request.n) if wanted else [])
            for line in chunk:
                write(("\t".join(next(outputs)) if line.strip() or request.prompt is not None else "") + "\n")
