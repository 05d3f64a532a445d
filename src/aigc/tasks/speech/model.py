"""What the caption-prefix speech model adds to the GPT: the codebook level of each audio token, and the codebooks."""

from __future__ import annotations

import torch
from torch import nn

from aigc.config import ModelConfig


class AudioLevels(nn.Module):
    """With several codebooks, an embedding of the level each position predicts (a frame is one token per level);
    the ``codebook`` buffer (levels, codes, mels), each audio token's log-mel frame, saved with the weights.

    Sequences are ``audio_prefix`` text tokens then the audio tokens frame by frame; text positions get nothing.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.levels, self.prefix = config.audio_levels or 1, config.audio_prefix or 1
        self.register_buffer("codebook", torch.zeros(self.levels, config.audio_codes, config.audio_mels or 1))
        self.audio_level = nn.Embedding(self.levels, config.n_embd) if self.levels > 1 else None

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """(..,) positions -> (.., C) level embeddings, zero on text positions; a 0-d zero with one level."""
        if self.audio_level is None:
            return torch.zeros((), dtype=self.codebook.dtype, device=positions.device)
        frame_token = positions - (self.prefix - 1)
        embedding = self.audio_level(frame_token.clamp(min=0) % self.levels)
        return embedding * (frame_token >= 0).unsqueeze(-1)
