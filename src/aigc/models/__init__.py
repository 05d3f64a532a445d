"""Transformer models written on ``torch.nn.functional.scaled_dot_product_attention``."""

from aigc.models.gpt import GPT

__all__ = ["GPT"]
