"""Transformer models written on ``torch.nn.functional.scaled_dot_product_attention``."""

import torch
from torch import nn

from aigc.config import ModelConfig
from aigc.models.gpt import GPT, InputExtras
from aigc.models.layers import RotaryEmbedding
from aigc.models.seq2seq import Seq2Seq

__all__ = ["GPT", "Seq2Seq", "build_model", "empty_model"]


def build_model(config: ModelConfig, extras: InputExtras | None = None) -> nn.Module:
    """The model ``config.kind`` names: the decoder-only GPT (with the run's kind's input ``extras``, if any) or
    the encoder-decoder."""
    return Seq2Seq(config) if config.kind == "seq2seq" else GPT(config, extras)


def empty_model(config: ModelConfig, extras: InputExtras | None = None) -> nn.Module:
    """The model of ``config`` with uninitialised weights on the CPU, for loading saved ones into: the random
    initialisation that :func:`build_model` does took 10.6 of the 15 s of ``aigc generate`` on a 0.5B run. Built on
    the meta device, then given storage; the RoPE tables, which are not saved, are computed."""
    with torch.device("meta"):
        model = build_model(config, extras)
    first: dict[int, tuple[nn.Module, str]] = {}  # each parameter's first owner: to_empty unties shared ones
    ties = []
    for module in model.modules():
        for name, parameter in module.named_parameters(recurse=False):
            if id(parameter) in first:
                ties.append((module, name, *first[id(parameter)]))
            else:
                first[id(parameter)] = (module, name)
    model.to_empty(device="cpu")
    for module, name, owner, owner_name in ties:  # a tied output projection shares the embedding again
        setattr(module, name, getattr(owner, owner_name))
    for module in model.modules():
        if isinstance(module, RotaryEmbedding):
            module.reset_tables()
    return model
