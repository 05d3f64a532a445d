"""What a training run will hold in memory on each process, estimated before anything is allocated.

Per process, for AdamW in float32 (the master weights, their gradients and two moments):

* weights: every parameter, in its stored dtype (a LoRA run's frozen base is bfloat16 under
  ``train.precision=bf16``); under FSDP a 1/N shard of each, plus two blocks gathered whole (the one running
  and the next, prefetched);
* gradients: 4 bytes per trained parameter (1/N of them under FSDP);
* optimizer: 8 bytes per trained parameter, AdamW's two moments (1/N under FSDP);
* activations: what the backward pass keeps of one micro-batch of ``B`` sequences of ``T`` tokens. Per
  block about ``(10 C + 3 H)`` numbers per token (the inputs of the norms, the projections, attention and
  the MLP, with ``C`` the width and ``H`` the MLP's hidden size), 4 bytes each (2 under bf16 autocast);
  with ``train.activation_checkpointing`` only each block's input, plus one block recomputed at a time.
  The logits and their gradient add ``2 B T V`` float32 numbers, unless the output projection is frozen
  (a LoRA run), whose loss is taken in chunks (:mod:`aigc.training.chunked_loss`).

These are estimates, within tens of percent for the weights and optimizer (exact counts) and the
activations (the kernels' workspaces and the allocator's slack are not counted); a run is refused only when
the estimate exceeds the memory the device has free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aigc.config import Config
from aigc.errors import TrainingError
from aigc.models import build_model
from aigc.models.gpt import InputExtras
from aigc.models.lora import apply_lora
from aigc.training.parallel import blocks

GiB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one process of the run holds at its peak, by what holds them."""

    parallel: str
    world: int
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / GiB:.2f}"
                          for name in ("weights", "gradients", "optimizer", "activations"))
        return (f"estimated memory per process ({self.parallel} over {self.world} process(es)): {parts} = "
                f"{self.total / GiB:.2f} GiB")


def estimate(config: Config, extras: InputExtras | None, world: int) -> MemoryEstimate:
    """The per-process memory of training ``config``'s model (built on the meta device: no memory, no time)."""
    tc, mc = config.train, config.model
    with torch.device("meta"):
        model = build_model(mc, extras)
        if tc.lora.enabled:
            if tc.precision == "bf16":
                model.to(torch.bfloat16)
            apply_lora(model, tc.lora)
    params = {id(p): p for p in model.parameters()}.values()  # a tied weight counted once
    stored = sum(p.numel() * p.element_size() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    shards = world if tc.parallel == "fsdp" else 1
    largest_block = max((_bytes(block) for block in blocks(model)), default=0)
    weights = stored // shards + (2 * largest_block if shards > 1 else 0)
    activations = _activations(model, config)
    return MemoryEstimate(tc.parallel, world, weights, 4 * trained // shards, 8 * trained // shards, activations)


def _bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _activations(model: nn.Module, config: Config) -> int:
    tc, mc = config.train, config.model
    tokens = tc.batch_size * (tc.seq_len or mc.block_size)
    size = 2 if tc.precision == "bf16" else 4
    per_block = tokens * (10 * mc.n_embd + 3 * mc.hidden) * size
    layers = len(blocks(model))
    kept = tokens * mc.n_embd * size * layers + per_block if tc.activation_checkpointing else per_block * layers
    head = getattr(model, "lm_head", None)
    frozen_head = head is not None and not head.weight.requires_grad
    return kept + (0 if frozen_head else 2 * tokens * mc.vocab_size * 4)


def free_memory(device: torch.device) -> int:
    """Bytes this process may use on ``device``: the GPU's free memory, or the machine's available memory shared
    by the processes torchrun started on it."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    available = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if not available:  # not Linux: nothing to compare against
        return 1 << 62
    return available // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def check_fits(needed: MemoryEstimate, free: int) -> None:
    """Refuse a run whose estimate exceeds ``free`` bytes, saying what to change."""
    if needed.total <= free:
        return
    remedies = ["lower train.batch_size (raise train.grad_accum to keep the tokens per step)"]
    if needed.parallel != "fsdp":
        remedies.append("shard the model over several processes with train.parallel=fsdp under torchrun")
    remedies += ["turn on train.activation_checkpointing", "train LoRA adapters (train.lora.rank) instead of every "
                 "weight"]
    raise TrainingError(f"this run does not fit: {needed.describe()}, and {free / GiB:.2f} GiB is free. "
                        f"{'; or '.join(remedies)}")
