"""AdamW with decay only where it helps, and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from aigc.config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices decay, norms and biases (1-D) never, embeddings only with ``train.decay_embeddings``.

    Uses the fused kernel where this torch has one for the device, else the multi-tensor (foreach) one.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))  # a tied weight is optimised once
            is_embedding = isinstance(module, nn.Embedding)
            if param.dim() >= 2 and (config.decay_embeddings or not is_embedding):
                decay.append(param)
            else:
                no_decay.append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=config.lr, betas=(config.beta1, config.beta2))
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device / torch
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def learning_rate(config: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine from ``lr`` to ``min_lr`` as ``progress`` goes 0 -> 1.

    ``progress`` is the share of the budget used: steps, or minutes when a time budget runs out first.
    """
    min_lr = config.min_lr if config.min_lr is not None else config.lr / 10
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - min_lr)
