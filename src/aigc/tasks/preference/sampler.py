"""Preference pairs -> training batches: whole pairs, each answer's sequence right-padded to the batch's longest.

A micro-batch of ``B`` pairs is ``((ids,), targets)`` with ``ids`` (2B, L): the B prompt + chosen sequences,
then the B prompt + rejected ones in the same order (the order DPO's loss splits them in), and ``targets``
(2B, L) the next token where that token is the answer's (the loss mask), else -1. Padding comes after each
sequence, so causal attention never lets a real token see it. As for every sampler, the batch of a step is a
pure function of (seed, step): epoch ``e`` takes the pairs in the order of a permutation seeded with (seed, e),
so a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from aigc.errors import TrainingError

Batch = tuple[tuple[torch.Tensor], torch.Tensor]


class PreferenceSampler:
    def __init__(self, tokens: np.ndarray, mask: np.ndarray, lengths: np.ndarray, batch_size: int, grad_accum: int,
                 seed: int, rank: int = 0, world: int = 1, split: str = "train"):
        lengths = np.asarray(lengths, dtype=np.int64)
        if len(lengths) == 0:
            raise TrainingError(f"the {split} split holds no preference pairs; prepare more pairs or lower "
                                "data.val_fraction")
        if grad_accum % world:
            raise TrainingError(f"train.grad_accum ({grad_accum}) must be a multiple of the number of processes "
                                f"({world})")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.starts, self.lengths = starts.reshape(-1, 2), lengths.reshape(-1, 2)  # (pairs, chosen/rejected)
        self.tokens, self.mask = tokens, mask
        self.batch_size, self.grad_accum, self.seed, self.rank, self.world = batch_size, grad_accum, seed, rank, world

    def __len__(self) -> int:
        return len(self.lengths)

    def _pairs(self, first: int, count: int) -> list[int]:
        """Pairs ``first .. first + count`` of the endless sequence of seeded epochs."""
        n = len(self)
        picked: list[int] = []
        while len(picked) < count:
            epoch, offset = divmod(first + len(picked), n)
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            picked.extend(order[offset : offset + count - len(picked)].tolist())
        return picked

    def batch(self, pairs: list[int]) -> Batch:
        """The tensors of ``pairs`` (indices): chosen sequences first, then the rejected ones."""
        sequences = [(int(self.starts[p, side]), int(self.lengths[p, side])) for side in (0, 1) for p in pairs]
        width = max(n for _, n in sequences)
        ids = np.zeros((len(sequences), width), dtype=np.int64)
        targets = np.full((len(sequences), width), -1, dtype=np.int64)
        for row, (start, n) in enumerate(sequences):
            tokens = np.asarray(self.tokens[start : start + n], dtype=np.int64)
            learn = np.asarray(self.mask[start + 1 : start + n], dtype=bool)
            ids[row, :n] = tokens
            targets[row, : n - 1] = np.where(learn, tokens[1:], -1)
        return (torch.from_numpy(ids),), torch.from_numpy(targets)

    def step_batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches of optimizer step ``step`` (0-based)."""
        per_step = self.grad_accum * self.batch_size
        pairs = self._pairs(step * per_step, per_step)
        return [self.batch(pairs[m * self.batch_size : (m + 1) * self.batch_size])
                for m in range(self.rank, self.grad_accum, self.world)]

    def eval_batches(self, count: int | None) -> Iterator[Batch]:
        """Up to ``count`` (None: all) fixed micro-batches of the split's pairs in stored order, shared out between
        ranks."""
        batches = [list(range(i, min(i + self.batch_size, len(self)))) for i in range(0, len(self), self.batch_size)]
        batches = batches[:count]
        return (self.batch(batches[m]) for m in range(self.rank, len(batches), self.world))
