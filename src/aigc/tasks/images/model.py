"""What the caption-prefix image model adds to the GPT: pixel positions, and the palette."""

from __future__ import annotations

import torch
from torch import nn

from aigc.config import ModelConfig


class PixelPositions(nn.Module):
    """Row and column embeddings of the pixel each position predicts, on top of the 1-D positions; the RGB colour
    of each pixel token (the last ``image_colors`` ids) as the ``palette`` buffer, saved with the weights.

    Sequences are ``image_prefix`` caption tokens then the pixels in raster order, so position p predicts pixel
    ``p - image_prefix + 1``; caption positions get nothing.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.side, self.prefix = config.image_size, config.image_prefix or 1
        self.image_rows = nn.Embedding(config.image_size, config.n_embd)
        self.image_cols = nn.Embedding(config.image_size, config.n_embd)
        self.register_buffer("palette", torch.zeros(config.image_colors or 2, 3, dtype=torch.uint8))

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """(..,) positions -> (.., C) embeddings, zero on caption positions."""
        pixel = positions - (self.prefix - 1)
        index = pixel.clamp(0, self.side * self.side - 1)
        embedding = self.image_rows(index // self.side) + self.image_cols(index % self.side)
        return embedding * (pixel >= 0).unsqueeze(-1)
