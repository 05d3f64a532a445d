"""KV storage for continuous batching: sequences of different lengths that join and leave between steps.

Each decoder layer gets one :class:`SlotCache` of ``slots`` rows. The live sequences always occupy rows
``0 .. active - 1`` (a sequence that leaves is replaced by the last one), so a decoding step reads
views of the storage and never gathers. All layers share one ``lengths`` tensor (positions filled per
row), owned by :class:`SlotBatch`, which also builds the per-row positions and key mask of a step.

Shapes: N = slots, Hkv = key/value heads, P = capacity (the model's context), D = head size,
B = active rows, S = the longest active row after this step.
"""

from __future__ import annotations

import torch

from aigc.models.layers import KVCache


class SlotCache:
    """One layer's keys/values (N, Hkv, P, D); duck-types :class:`KVCache` for ``SelfAttention``."""

    length = 0  # SelfAttention reads it only when no mask is given; a SlotBatch always gives one

    def __init__(self, batch: SlotBatch, kv_heads: int, head_dim: int, capacity: int, dtype, device):
        self.batch = batch
        self.keys = torch.zeros(batch.slots, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new key/value per active row, (B, Hkv, 1, D), at that row's length; return (B, Hkv, S, D) views."""
        B = k.shape[0]
        rows, at = torch.arange(B, device=k.device), self.batch.lengths[:B]
        self.keys[rows, :, at] = k[:, :, 0]
        self.values[rows, :, at] = v[:, :, 0]
        end = int(at.max()) + 1
        return self.keys[:B, :, :end], self.values[:B, :, :end]


class SlotBatch:
    """The rows of a continuous batch across all layers: load a prefilled sequence, step, move, free."""

    def __init__(self, model, slots: int):
        c, param = model.config, model.wte.weight
        self.slots, self.capacity, self.active = slots, c.block_size, 0
        self.lengths = torch.zeros(slots, dtype=torch.long, device=param.device)
        self.caches = [SlotCache(self, c.kv_heads, c.head_dim, c.block_size, param.dtype, param.device)
                       for _ in range(c.n_layer)]

    def add(self, prefilled: list[KVCache], row: int = 0) -> int:
        """Copy row ``row`` of a prefilled per-layer cache into the next free slot; return the slot."""
        slot, length = self.active, prefilled[0].length
        for cache, source in zip(self.caches, prefilled):
            cache.keys[slot, :, :length] = source.keys[row, :, :length]
            cache.values[slot, :, :length] = source.values[row, :, :length]
        self.lengths[slot] = length
        self.active += 1
        return slot

    def remove(self, slot: int) -> int | None:
        """Free ``slot`` by moving the last active row into it; return the row that moved (None if none did)."""
        last = self.active - 1
        self.active -= 1
        if slot == last:
            return None
        for cache in self.caches:
            cache.keys[slot], cache.values[slot] = cache.keys[last], cache.values[last]
        self.lengths[slot] = self.lengths[last]
        return last

    def step_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (B, 1) of the next token of each active row and its key mask (B, 1, 1, S)."""
        lengths = self.lengths[: self.active]
        keys = torch.arange(int(lengths.max()) + 1, device=lengths.device)
        return lengths[:, None], (keys[None, :] <= lengths[:, None])[:, None, None, :]

    def advance(self) -> None:
        self.lengths[: self.active] += 1
