"""Batches for the caption-prefix image model: [caption, left-padded to P] + [pixels], loss on pixels only.

Like the other samplers, the batch of a step depends only on (seed, step), so resume is exact and
ranks take their share of the micro-batches. With ``condition_dropout`` a share of the captions is
replaced by padding only (the empty caption): the model also learns the caption-free distribution,
which classifier-free guidance needs at sampling time.
"""

from __future__ import annotations

import numpy as np
import torch

from aigc.data.pairs import split_pairs, target_start
from aigc.errors import TrainingError


def prefix_sequences(pairs, prefix: int, pad: int) -> np.ndarray:
    """(N, P + S*S) int64: each caption (ids + end token) left-padded with ``pad`` to ``prefix``, then its pixels."""
    rows = []
    for caption, pixels in pairs:
        caption = np.asarray(caption[-prefix:], dtype=np.int64)
        rows.append(np.concatenate([np.full(prefix - len(caption), pad, dtype=np.int64), caption,
                                    np.asarray(pixels[:-1], dtype=np.int64)]))
    return np.stack(rows)


class PrefixSampler:
    def __init__(self, pairs, pad: int, prefix: int, batch_size: int, grad_accum: int, seed: int, rank: int = 0,
                 world: int = 1, split: str = "train", condition_dropout: float = 0.0):
        if len(pairs) < batch_size:
            raise TrainingError(f"the {split} split has {len(pairs)} images, fewer than train.batch_size={batch_size}; "
                                "add data or lower train.batch_size")
        if grad_accum % world:
            raise TrainingError(f"train.grad_accum ({grad_accum}) must be a multiple of the number of processes ({world})")
        self.sequences = torch.from_numpy(prefix_sequences(pairs, prefix, pad))
        self.pad, self.prefix, self.batch_size, self.grad_accum = pad, prefix, batch_size, grad_accum
        self.seed, self.rank, self.world, self.condition_dropout = seed, rank, world, condition_dropout

    def collate(self, rows: torch.Tensor, dropped: torch.Tensor | None = None):
        """((inputs (B, L-1),), targets (B, L-1)) with targets -1 on caption positions; ``dropped`` (B,) bool
        marks the rows whose caption becomes padding only."""
        sequences = self.sequences[rows].clone()
        if dropped is not None:
            sequences[dropped, : self.prefix] = self.pad
        targets = sequences[:, 1:].clone()
        targets[:, : self.prefix - 1] = -1
        return (sequences[:, :-1],), targets

    def step_batches(self, step: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = torch.randint(0, len(self.sequences), (self.grad_accum, self.batch_size), generator=generator)
        # every micro-batch's caption dropout is drawn here, so process r of N gets what one process would
        dropped = (torch.rand(self.grad_accum, self.batch_size, generator=generator) < self.condition_dropout
                   if self.condition_dropout else [None] * self.grad_accum)
        return [self.collate(rows[i], dropped[i]) for i in range(self.rank, self.grad_accum, self.world)]

    def eval_batches(self, count: int):
        starts = np.linspace(0, len(self.sequences) - self.batch_size, count).astype(int)
        return [self.collate(torch.arange(s, s + self.batch_size)) for s in starts[self.rank :: self.world]]


def prefix_samplers(config, manifest: dict, prefix: int, rank: int, world: int) -> tuple[PrefixSampler, PrefixSampler | None]:
    """Train and val samplers of a caption-prefix run (images, speech): its shards' pairs, ``prefix`` tokens of
    caption; val is None when the split is empty, and one batch of all its pairs when it is smaller than a batch
    (else a large train.batch_size would leave a small data set unevaluated: no val loss, no best checkpoint)."""
    tc, data_dir, pad = config.train, config.run_dir / "data", target_start(manifest)
    train = PrefixSampler(split_pairs(data_dir, manifest, "train"), pad, prefix, tc.batch_size, tc.grad_accum,
                          config.seed, rank, world, condition_dropout=tc.condition_dropout)
    val_pairs = split_pairs(data_dir, manifest, "val")
    val = (PrefixSampler(val_pairs, pad, prefix, min(tc.batch_size, len(val_pairs)), world, config.seed, rank, world,
                         "val") if len(val_pairs) else None)
    return train, val
