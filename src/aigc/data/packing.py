"""Conversations -> training batches: packed rows, with attention kept inside each conversation.

Rows of ``seq_len`` tokens are filled with whole conversations in a seeded order (greedy, in turn: a
conversation that does not fit starts the next row), the rest of a row is padding. Each row comes with

- ``positions`` that restart at 0 for every conversation, so a packed one sees the positions it would alone;
- a block-diagonal causal attention mask: a token sees earlier tokens of its own conversation only;
- targets that are the next token where that token is the assistant's (the loss mask), else -1.

So a packed batch computes exactly what each conversation would alone (tested), without the compute
that padding every conversation to the longest would waste. As for the window sampler, the batch of a
step is a pure function of (seed, step): epoch ``e`` packs the conversations in the order of a
permutation seeded with (seed, e), steps take rows in turn, and a resumed run continues exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from aigc.errors import TrainingError

Batch = tuple[tuple[torch.Tensor | None, ...], torch.Tensor]


class PackedSampler:
    """Micro-batches ``((ids, None, None, positions, mask), targets)``: the GPT's forward arguments, (B, L) each
    and the mask (B, 1, L, L) bool; ``targets`` (B, L) int64 with -1 where no loss is taken."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, lengths: np.ndarray, seq_len: int, batch_size: int,
                 grad_accum: int, seed: int, rank: int = 0, world: int = 1, split: str = "train"):
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        fits = lengths <= seq_len
        self.starts, self.lengths = starts[fits], lengths[fits]
        if len(self.lengths) == 0:
            raise TrainingError(f"no {split} conversation fits in train.seq_len={seq_len} tokens; raise it (up to "
                                "model.block_size) or prepare shorter conversations")
        if grad_accum % world:
            raise TrainingError(f"train.grad_accum ({grad_accum}) must be a multiple of the number of processes ({world})")
        self.tokens, self.mask, self.seq_len = tokens, mask, seq_len
        self.batch_size, self.grad_accum, self.seed, self.rank, self.world = batch_size, grad_accum, seed, rank, world
        self._epochs: list[list[list[int]]] = []

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Conversation indices of each row, filled greedily in ``order``."""
        rows, row, used = [], [], 0
        for index in order.tolist():
            length = int(self.lengths[index])
            if used + length > self.seq_len and row:
                rows.append(row)
                row, used = [], 0
            row.append(index)
            used += length
        rows.append(row)
        return rows

    def _rows(self, first: int, count: int) -> list[list[int]]:
        """Rows ``first .. first + count`` of the endless sequence of epochs."""
        rows: list[list[int]] = []
        epoch, offset = 0, first
        while len(rows) < count:
            while epoch >= len(self._epochs):
                order = np.random.default_rng([self.seed, len(self._epochs)]).permutation(len(self.lengths))
                self._epochs.append(self._pack(order))
            packed = self._epochs[epoch]
            if offset >= len(packed):
                offset -= len(packed)
            else:
                rows.extend(packed[offset : offset + count - len(rows)])
                offset = 0
            epoch += 1
        return rows

    def batch(self, rows: list[list[int]]) -> Batch:
        """The tensors of packed ``rows`` (each a list of conversation indices)."""
        B, L = len(rows), self.seq_len
        ids = np.zeros((B, L), dtype=np.int64)
        targets = np.full((B, L), -1, dtype=np.int64)
        positions = np.zeros((B, L), dtype=np.int64)
        segment = np.full((B, L), -1, dtype=np.int64)  # padding is segment -1: it sees only padding
        for b, row in enumerate(rows):
            at = 0
            for s, index in enumerate(row):
                start, n = int(self.starts[index]), int(self.lengths[index])
                tokens = np.asarray(self.tokens[start : start + n], dtype=np.int64)
                learn = np.asarray(self.mask[start + 1 : start + n], dtype=bool)
                ids[b, at : at + n] = tokens
                targets[b, at : at + n - 1] = np.where(learn, tokens[1:], -1)
                positions[b, at : at + n] = np.arange(n)
                segment[b, at : at + n] = s
                at += n
        segment_t = torch.from_numpy(segment)
        causal = torch.ones(L, L, dtype=torch.bool).tril()
        attend = (segment_t[:, :, None] == segment_t[:, None, :]) & causal  # (B, L, L)
        return (torch.from_numpy(ids), None, None, torch.from_numpy(positions), attend[:, None]), torch.from_numpy(targets)

    def step_batches(self, step: int) -> list[Batch]:
        """This rank's micro-batches of optimizer step ``step`` (0-based)."""
        per_step = self.grad_accum * self.batch_size
        rows = self._rows(step * per_step, per_step)
        return [self.batch(rows[m * self.batch_size : (m + 1) * self.batch_size])
                for m in range(self.rank, self.grad_accum, self.world)]

    def eval_batches(self, count: int | None) -> Iterator[Batch]:
        """Up to ``count`` (None: all) fixed micro-batches, the split packed in its stored order, shared out
        between ranks; built one at a time."""
        rows = self._pack(np.arange(len(self.lengths)))
        batches = [rows[i : i + self.batch_size] for i in range(0, len(rows), self.batch_size)][:count]
        return (self.batch(batches[m]) for m in range(self.rank, len(batches), self.world))
