"""Transformer models written on ``torch.nn.functional.scaled_dot_product_attention``."""

from torch import nn

from aigc.config import ModelConfig
from aigc.models.gpt import GPT
from aigc.models.seq2seq import Seq2Seq

__all__ = ["GPT", "Seq2Seq", "build_model"]


def build_model(config: ModelConfig) -> nn.Module:
    """The model ``config.kind`` names: the decoder-only GPT or the encoder-decoder."""
    return Seq2Seq(config) if config.kind == "seq2seq" else GPT(config)
