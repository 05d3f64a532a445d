"""KV storage for continuous batching: sequences of different lengths that join and leave between steps.

Each decoder layer gets one :class:`SlotCache` of ``slots`` rows. The live sequences always occupy rows
``0 .. active - 1`` (a sequence that leaves is replaced by the last one), so a decoding step reads
views of the storage and never gathers. All layers share one ``lengths`` tensor (positions filled per
row), owned by :class:`SlotBatch`, which also builds the per-row positions and key mask of a step.

The storage grows as rows get longer (doubling, up to the model's context), so a server for a model
with a long context does not hold ``slots x context`` keys and values from the start.

Shapes: N = slots, Hkv = key/value heads, P = positions allocated (at most the model's context),
D = head size, B = active rows, S = the longest active row after this step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from aigc.generate.decode import next_logits
from aigc.generate.prefix_cache import PrefixCache
from aigc.models.layers import KVCache


class SlotCache:
    """One layer's keys/values (N, Hkv, P, D); duck-types :class:`KVCache` for ``SelfAttention``."""

    length = 0  # SelfAttention reads it only when no mask is given; a SlotBatch always gives one

    def __init__(self, batch: SlotBatch, kv_heads: int, head_dim: int, positions: int, dtype, device):
        self.batch = batch
        self.keys = torch.zeros(batch.slots, kv_heads, positions, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)

    def grow(self, positions: int) -> None:
        """Room for ``positions`` keys per row, the stored ones kept."""
        keys = self.keys.new_zeros(*self.keys.shape[:2], positions, self.keys.shape[3])
        values = torch.zeros_like(keys)
        keys[:, :, : self.keys.shape[2]] = self.keys
        values[:, :, : self.values.shape[2]] = self.values
        self.keys, self.values = keys, values

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new key/value per active row, (B, Hkv, 1, D), at that row's length; return (B, Hkv, S, D) views."""
        B = k.shape[0]
        rows, at = torch.arange(B, device=k.device), self.batch.lengths[:B]
        self.keys[rows, :, at] = k[:, :, 0]
        self.values[rows, :, at] = v[:, :, 0]
        end = int(at.max()) + 1
        return self.keys[:B, :, :end], self.values[:B, :, :end]


@dataclass
class Prefill:
    """A prompt being prefilled alone: its per-layer caches (batch 1), how many positions are done, and the
    logits kept (the last chunk's last position, or with ``every_position`` each chunk's every position)."""

    prompt: list[int]
    caches: list[KVCache]
    every_position: bool = False
    done: int = 0
    logits: list[torch.Tensor] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.done == len(self.prompt)


class SlotBatch:
    """The rows of a continuous batch across all layers: prefill a sequence into slots, step, move, free."""

    scores_prompts = True

    def __init__(self, model, slots: int, positions: int = 256, prefix_cache: PrefixCache | None = None):
        c, param = model.config, model.wte.weight
        self.model, self.prefix_cache = model, prefix_cache
        self.slots, self.capacity, self.active = slots, c.block_size, 0
        self.allocated = min(positions, c.block_size)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=param.device)
        self.caches = [SlotCache(self, c.kv_heads, c.head_dim, self.allocated, param.dtype, param.device)
                       for _ in range(c.n_layer)]

    def reserve(self, positions: int) -> None:
        """Make room for ``positions`` keys per row (doubling, up to the context ``capacity``)."""
        if positions > self.allocated:
            self.allocated = min(self.capacity, max(positions, 2 * self.allocated))
            for cache in self.caches:
                cache.grow(self.allocated)

    def prefill(self, prompt: list[int], copies: int, every_position: bool = False) -> tuple[torch.Tensor, list[int]]:
        """Run ``prompt`` alone and load its keys/values into ``copies`` free slots: the logits after it (V,), or
        with ``every_position`` after each of its L tokens (L, V); and the slots. All or nothing: after a failure
        no slot is kept. (:meth:`start`, :meth:`run` and :meth:`place` do the same a chunk at a time.)"""
        prefill = self.start(prompt, every_position)
        self.run(prefill, len(prompt))
        return self.place(prefill, copies)

    def start(self, prompt: list[int], every_position: bool = False) -> Prefill:
        """A prefill of ``prompt`` to run chunk by chunk, from the longest prefix the prefix cache holds (none when
        ``every_position``: every position's logits are needed)."""
        prefill = Prefill(prompt, self.model.new_caches(1, len(prompt)), every_position)
        if self.prefix_cache is not None and not every_position:
            prefill.done = self.prefix_cache.load(prompt, prefill.caches)
        return prefill

    def run(self, prefill: Prefill, tokens: int) -> tuple[int, bool]:
        """Compute the next ``tokens`` positions of ``prefill``'s prompt at most: how many it computed, and whether
        the whole prompt is done."""
        start = prefill.done
        end = min(start + tokens, len(prefill.prompt))
        ids = torch.tensor(prefill.prompt[prefill.done : end], device=self.lengths.device)[None]
        if prefill.every_position:
            prefill.logits.append(self.model(ids, caches=prefill.caches)[0].float())
        else:
            prefill.logits = [next_logits(self.model, ids, prefill.caches)[0]]
        prefill.done = end
        if prefill.finished and self.prefix_cache is not None:
            self.prefix_cache.store(prefill.prompt, prefill.caches)
        return end - start, prefill.finished

    def place(self, prefill: Prefill, copies: int) -> tuple[torch.Tensor, list[int]]:
        """Load a finished prefill into ``copies`` free slots: its logits (V,) or (L, V), and the slots."""
        logits = torch.cat(prefill.logits) if prefill.every_position else prefill.logits[0]
        first = self.active
        try:
            return logits, [self.add(prefill.caches) for _ in range(copies)]
        except BaseException:
            self.active = first
            raise

    def step(self, tokens: list[int]) -> torch.Tensor:
        """One token per active row -> the logits after it, (B, V)."""
        positions, mask = self.step_inputs()
        ids = torch.tensor(tokens, device=self.lengths.device)[:, None]
        logits = next_logits(self.model, ids, self.caches, positions, mask)
        self.advance()
        return logits

    def reset(self) -> None:
        """Free every slot."""
        self.active = 0

    def add(self, prefilled: list[KVCache], row: int = 0) -> int:
        """Copy row ``row`` of a prefilled per-layer cache into the next free slot; return the slot."""
        slot, length = self.active, prefilled[0].length
        self.reserve(length + 1)
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
        longest = int(lengths.max()) + 1
        self.reserve(longest)
        keys = torch.arange(longest, device=lengths.device)
        return lengths[:, None], (keys[None, :] <= lengths[:, None])[:, None, None, :]

    def advance(self) -> None:
        self.lengths[: self.active] += 1
