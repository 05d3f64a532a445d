"""Shards -> training batches: random windows drawn from a seed and the step number alone.

The batch of optimizer step ``s`` is a pure function of ``(seed, s)``: ``grad_accum * batch_size``
windows of ``block_size + 1`` tokens at offsets from a generator seeded with both. Consequences:

- the data position of a run is just its step, so resume is exact with nothing else saved;
- the global batch does not depend on the number of processes: micro-batch ``m`` of a step goes to
  rank ``m % world``, so 1 process and N processes see the same windows, and a run resumes on any N.
"""

from __future__ import annotations

import numpy as np
import torch

from aigc.errors import TrainingError


class WindowSampler:
    """Micro-batches ``((inputs,), targets)``, each (batch_size, block_size) int64, for one rank.

    Inputs come as a tuple, the arguments of the model's forward, as for every sampler.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        grad_accum: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        split: str = "train",
    ):
        if len(tokens) < block_size + 2:
            raise TrainingError(
                f"the {split} split has {len(tokens):,} tokens, too few for windows of model.block_size={block_size}; "
                "lower model.block_size or add data"
            )
        if grad_accum % world:
            raise TrainingError(f"train.grad_accum ({grad_accum}) must be a multiple of the number of processes ({world})")
        self.tokens = tokens
        self.block_size, self.batch_size, self.grad_accum = block_size, batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world

    def _windows(self, offsets: np.ndarray) -> tuple[tuple[torch.Tensor], torch.Tensor]:
        rows = np.stack([self.tokens[o : o + self.block_size + 1] for o in offsets]).astype(np.int64)
        data = torch.from_numpy(rows)
        return (data[:, :-1],), data[:, 1:]

    def step_batches(self, step: int) -> list[tuple[tuple[torch.Tensor], torch.Tensor]]:
        """This rank's micro-batches of optimizer step ``step`` (0-based)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        high = len(self.tokens) - self.block_size - 1
        offsets = torch.randint(0, high, (self.grad_accum, self.batch_size), generator=generator).numpy()
        return [self._windows(offsets[m]) for m in range(self.rank, self.grad_accum, self.world)]

    def eval_batches(self, count: int) -> list[tuple[tuple[torch.Tensor], torch.Tensor]]:
        """A fixed set of ``count`` micro-batches evenly spread over the split, shared out between ranks."""
        high = len(self.tokens) - self.block_size - 1
        offsets = np.linspace(0, high, count * self.batch_size).astype(np.int64).reshape(count, self.batch_size)
        return [self._windows(offsets[m]) for m in range(self.rank, count, self.world)]
