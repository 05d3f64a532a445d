"""Descriptions in, images out: a caption tokenizer, the caption-prefix GPT and its palette.

The model reads the caption (left-padded to ``image_prefix`` tokens) and writes the pixels. Its last
``image_colors`` token ids are pixel colours; ``model.extras.palette`` (saved with the weights) turns them
back into RGB. Sampling goes through :func:`~aigc.tasks.caption_prefix.draw` (KV cache, temperature, top-k/p, seed,
classifier-free guidance).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from aigc.checkpoint import Checkpoint, as_checkpoint
from aigc.errors import GenerationError
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams
from aigc.models.gpt import GPT
from aigc.tasks.caption_prefix import draw, left_padded
from aigc.tasks.images.model import PixelPositions
from aigc.tasks.images.pixels import dequantise
from aigc.tokenizer import UNK, eot_id

log = logging.getLogger(__name__)


class ImageGenerator:
    def __init__(self, model: GPT, tokenizer: Tokenizer):
        if not model.config.image_size:
            raise GenerationError("this run's model does not make images (it has no model.image_size)")
        self.model, self.tokenizer, self.engine = model, tokenizer, Engine(model)
        self.side = model.config.image_size
        self.palette = model.extras.palette.cpu().numpy()
        self.first_pixel = model.config.vocab_size - len(self.palette)
        self.eot = eot_id(tokenizer)
        self.unknown = tokenizer.token_to_id(UNK)
        self.prefix = model.config.image_prefix or 1

    @classmethod
    def from_checkpoint(cls, source: Checkpoint | Path, device: str = "cpu") -> ImageGenerator:
        checkpoint = as_checkpoint(source)
        return cls(checkpoint.load_model(device, extras=PixelPositions), Tokenizer.from_file(str(checkpoint.path / "tokenizer.json")))

    def encode(self, prompt: str) -> tuple[list[int], int]:
        """The caption prefix (ids + end token, left-padded to ``image_prefix``) and how many tokens were unknown."""
        if not prompt.strip():
            raise GenerationError("the prompt is empty; describe the image")
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        if len(ids) > self.prefix - 1:
            log.warning("the prompt is %d tokens; the model reads the first %d", len(ids), self.prefix - 1)
            ids = ids[: self.prefix - 1]
        unknown = sum(i == self.unknown for i in ids) if self.unknown is not None else 0
        if unknown:
            log.warning("%d token(s) of %r were never seen in training; generating anyway", unknown, prompt)
        return left_padded(ids, self.prefix, self.eot), unknown

    def generate(self, prompts: list[str], n: int, params: SamplingParams, guidance: float = 1.0) -> list[list[np.ndarray]]:
        """``n`` images (S, S, 3) uint8 for each prompt."""
        if n < 1:
            raise GenerationError(f"n must be at least 1, got {n}")
        if guidance < 0:
            raise GenerationError(f"the guidance scale must be 0 or more, got {guidance}")
        encoded = [self.encode(p)[0] for p in prompts]  # once per prompt: its warnings once, not n times
        prefixes = [prefix for prefix in encoded for _ in range(n)]
        tokens = draw(self.engine, prefixes, self.eot, self.side * self.side, self.first_pixel, params, guidance)
        images = [dequantise(row.numpy(), self.palette, self.side) for row in tokens]
        return [images[i * n : (i + 1) * n] for i in range(len(prompts))]
