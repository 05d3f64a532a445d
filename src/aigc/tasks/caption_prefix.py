"""The caption-prefix GPT that images and speech share: a caption (left-padded to P tokens) then the tokens
of what it describes (pixels, audio codes), the loss on those only.

Here: the sequences and their batches, the held-out loss in bits per token, and drawing in batches through
the engine's caption-prefix decoding (classifier-free guidance from the blank caption).

Like the other samplers, the batch of a step depends only on (seed, step), so resume is exact and
ranks take their share of the micro-batches. With ``condition_dropout`` a share of the captions is
replaced by padding only (the empty caption): the model also learns the caption-free distribution,
which classifier-free guidance needs at sampling time.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from aigc.data.pairs import split_pairs, target_start
from aigc.errors import TrainingError
from aigc.evaluation import summed_nll
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams

DRAW_BATCH = 64  # captions drawn together: bounds the KV cache of a large request


def prefix_sequences(pairs, prefix: int, pad: int) -> np.ndarray:
    """(N, P + T) int64: each caption (ids + end token) left-padded with ``pad`` to ``prefix``, then its T tokens."""
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
            raise TrainingError(f"the {split} split has {len(pairs)} captioned examples (images or clips), fewer than "
                                f"train.batch_size={batch_size}; add data or lower train.batch_size")
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


def left_padded(ids: list[int], prefix: int, eot: int) -> list[int]:
    """A caption's ids (at most ``prefix - 1``) and the end token, left-padded with it to ``prefix`` tokens."""
    return [eot] * (prefix - 1 - len(ids)) + ids + [eot]


@torch.inference_mode()
def bits_per_token(model, pairs, eot: int, prefix: int, batch: int = 64) -> tuple[float, int]:
    """The held-out loss of a caption-prefix run: mean negative log2-likelihood of each described token (pixel,
    audio code) given the caption and the tokens before it, and how many were scored."""
    sequences = torch.from_numpy(prefix_sequences(pairs, prefix, eot))
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch):
        chunk = sequences[start : start + batch]
        nll, scored = summed_nll(model(chunk[:, :-1])[:, prefix - 1 :], chunk[:, prefix:])
        total, count = total + nll, count + scored
    return total / max(count, 1) / math.log(2), count


def draw(engine: Engine, prefixes: list[list[int]], eot: int, length: int, first_id: int, params: SamplingParams,
         guidance: float) -> list[torch.Tensor]:
    """``length`` tokens among ids ``first_id ..`` (relative to it) for each caption of ``prefixes``, drawn
    ``DRAW_BATCH`` at a time; a seeded draw seeds each batch with ``seed + its first row``, so a row's tokens do
    not depend on how the request was split. The blank caption (end tokens only) is the unguided one."""
    blank = [eot] * len(prefixes[0])
    drawn: list[torch.Tensor] = []
    for start in range(0, len(prefixes), DRAW_BATCH):
        batch_params = params if params.seed is None else dataclasses.replace(params, seed=params.seed + start)
        drawn += list(engine.draw(prefixes[start : start + DRAW_BATCH], blank, length, first_id, batch_params, guidance))
    return drawn
