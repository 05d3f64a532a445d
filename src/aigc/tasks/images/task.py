"""Images from a description: captioned images for the caption-prefix GPT (the ``aigc.tasks.images`` package)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from aigc.checkpoint import Checkpoint
from aigc.config import Config, GenerateConfig
from aigc.data.clean import CleaningReport
from aigc.data.collect import CollectResult, write_sources
from aigc.data.prepare import PrepareResult
from aigc.data.sources import resolve_sources
from aigc.errors import GenerationError
from aigc.generate.sampling import sampling_params
from aigc.tasks.base import GenerateRequest, Task
from aigc.tasks.caption_prefix import prefix_samplers
from aigc.tasks.images.evaluation import evaluate_images, judge_for
from aigc.tasks.images.generator import ImageGenerator
from aigc.tasks.images.model import PixelPositions
from aigc.tasks.images.pixels import grid, save_png
from aigc.tasks.images.prepare import prepare_images
from aigc.tasks.images.sources import image_records

if TYPE_CHECKING:
    from aigc.serve.workers import ServedModel


class ImageTask(Task):
    name, model_kind, describes = "images", "gpt", "captioned images"
    report_keys = ("bits_per_pixel", "pixels_scored", "guidance", "adherence", "classifier_real_accuracy",
                   "adherence_seen", "adherence_heldout", "sample_diversity", "real_diversity", "exact_training_copies",
                   "nearest_training_distance", "real_nearest_training_distance", "samples_per_s")

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        r = report
        lines = [f"test bits/pixel {r['bits_per_pixel']:.3f}; {r['samples_per_s']:.1f} samples/s at guidance "
                 f"{r['guidance']:g}"]
        if "classifier_real_accuracy" in r:
            lines.append(f"prompt adherence {r['adherence']:.1%} (classifier on real digits: "
                         f"{r['classifier_real_accuracy']:.1%})")
        if r.get("adherence_seen") is not None or r.get("adherence_heldout") is not None:
            lines.append(f"prompt adherence {r['adherence']:.1%}: seen combinations {r['adherence_seen']:.1%}, "
                         f"held-out combinations {r['adherence_heldout']:.1%}")
        lines.append(f"diversity {r['sample_diversity']:.3f}"
                     + (f" (real {r['real_diversity']:.3f})" if "real_diversity" in r else "")
                     + f"; {r['exact_training_copies']} exact training copies; nearest-training distance "
                     f"{r['nearest_training_distance']:.3f}"
                     + (f" (real test images {r['real_nearest_training_distance']:.3f})"
                        if "real_nearest_training_distance" in r else ""))
        return lines

    def metrics(self, config: Config) -> dict[str, str | None]:
        judged = judge_for(config.data.builtin).judges_adherence
        return {"val_loss": None, "adherence": None if judged else
                "one built-in source with a judge: data.builtin=[digits] or [shapes]"}

    def collect(self, config: Config) -> CollectResult:
        report = CleaningReport()
        sources = resolve_sources(config.data) if config.data.paths else []
        count = sum(1 for _ in image_records(sources, config.data, report))
        listing = [{"source": s.label, "path": str(s.path), "bytes": s.path.stat().st_size} for s in sources]
        return write_sources(config, sources, listing, report, records=count)

    def prepare(self, config: Config) -> PrepareResult:
        return prepare_images(config)

    def model_config(self, config: Config, manifest: dict) -> Config:
        """Pixel positions, caption length and palette size come from the data, like the vocabulary; the block
        size grows to hold a caption and its pixels when it is shorter (``data.image_size=16`` on the digits
        recipe: 18 + 256 - 1 tokens), since an image cannot be drawn in a shorter window."""
        config = super().model_config(config, manifest)
        image = manifest["image"]
        needed = image["prefix"] + image["size"] ** 2 - 1
        update = {"image_size": image["size"], "image_colors": len(image["palette"]), "image_prefix": image["prefix"],
                  "block_size": max(config.model.block_size, needed)}
        return config.model_copy(update={"model": config.model.model_copy(update=update)})

    def samplers(self, config: Config, manifest: dict, rank: int, world: int) -> tuple[Any, Any | None]:
        return prefix_samplers(config, manifest, manifest["image"]["prefix"], rank, world)

    def model_extras(self) -> type[PixelPositions]:
        return PixelPositions

    def init_model(self, model: nn.Module, manifest: dict) -> None:
        """The palette (the pixels' colours) is saved with the weights."""
        model.extras.palette.copy_(torch.tensor(manifest["image"]["palette"], dtype=torch.uint8))

    def generator(self, checkpoint: Checkpoint, device: str = "cpu", base: nn.Module | None = None) -> ImageGenerator:
        return ImageGenerator.from_checkpoint(checkpoint, device)

    def served_model(self) -> type[ServedModel]:
        from aigc.tasks.images.served import ImageModel

        return ImageModel

    def evaluate(self, generator: ImageGenerator, run_dir: Path, manifest: dict, config: Config,
                 log: Callable[[str], None]) -> dict[str, Any]:
        return evaluate_images(generator, run_dir, manifest, config, log)

    def sample_markdown(self, samples: list[dict[str, Any]]) -> list[str]:
        return [line for s in samples for line in (
            f"**{s['prompt']}**" + (f" ({s['note']})" if "note" in s else ""), "", f"![{s['prompt']}]({s['grid']})", "")]

    def sample_text(self, sample: dict[str, Any], eval_dir: Path) -> str:
        return f"{sample['prompt']} -> {eval_dir / sample['grid']}"

    def generate(self, generator: ImageGenerator, request: GenerateRequest, settings: GenerateConfig,
                 write: Callable[[str], None]) -> None:
        """``n`` samples of the prompt, as one grid PNG (``--out sheet.png``) or one PNG each (``--out folder/``)."""
        if request.prompt is None:
            raise GenerationError("an image run needs --prompt with a description, e.g. --prompt \"the digit seven\"")
        if not request.out:
            raise GenerationError("an image run writes PNG files: add --out grid.png (one sheet) or --out folder/ "
                                  "(one PNG per sample)")
        out = Path(request.out)
        as_folder = request.out.endswith(("/", "\\")) or out.is_dir()
        if not as_folder and out.suffix.lower() != ".png":
            raise GenerationError(f"--out {request.out}: a grid is written as PNG; name it *.png, or end the path "
                                  "with / for a folder")
        params = sampling_params(settings, seed=request.seed)
        images = generator.generate([request.prompt], request.n, params, settings.guidance)[0]
        if as_folder:
            paths = [save_png(image, out / f"sample_{i:03d}.png") for i, image in enumerate(images)]
        else:
            paths = [save_png(grid(images, columns=min(8, len(images)), scale=max(1, 128 // generator.side)), out)]
        write("".join(f"{path}\n" for path in paths))
