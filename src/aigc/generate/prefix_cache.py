"""Keys and values of prompt prefixes kept between requests, so a prompt that starts like an earlier one (a
shared system prompt, the earlier turns of a chat) is prefilled from where they part.

Prompts are cut into blocks of ``block`` tokens; a block is known by its tokens and every token before it
(a hash chain, as vLLM's automatic prefix caching), and holds each layer's keys and values of those
positions. Only whole blocks are kept, and at least the prompt's last token is always computed (its logits
start the answer). The blocks live within ``max_bytes``; the least recently used go first. The results
are those of computing the prompt whole (tested: greedy outputs token for token).

Shapes: Hkv = key/value heads, D = head size, P = positions reused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from aigc.models.layers import KVCache

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (Hkv, block, D)


@dataclass
class Block:
    """One block's tokens and the key of the block before it (checked on use: a hash collision is no hit), and
    its keys and values."""

    parent: int
    tokens: tuple[int, ...]
    kv: KV


class PrefixCache:
    def __init__(self, max_bytes: int, block: int = 16):
        self.max_bytes, self.block = max_bytes, block
        self.blocks: OrderedDict[int, Block] = OrderedDict()
        self.bytes = 0
        self.prompt_tokens = self.reused_tokens = 0  # what the hit rate is counted from
        self.evicted = 0  # blocks dropped for room

    def _chain(self, prompt: list[int]) -> list[tuple[int, int, tuple[int, ...]]]:
        """(key, parent key, tokens) of each whole block of ``prompt``; a key hashes the parent's and the tokens."""
        chain, parent = [], 0
        for start in range(0, len(prompt) - len(prompt) % self.block, self.block):
            tokens = tuple(prompt[start : start + self.block])
            key = hash((parent, tokens))
            chain.append((key, parent, tokens))
            parent = key
        return chain

    def load(self, prompt: list[int], caches: list[KVCache]) -> int:
        """Fill empty per-layer ``caches`` (batch 1) with the longest known prefix of ``prompt`` that leaves its last
        token to compute; return how many positions (P) they now hold."""
        found: list[int] = []
        for key, parent, tokens in self._chain(prompt[:-1]):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tokens:
                break
            found.append(key)
        self._touch(found)
        reused = len(found) * self.block
        self.prompt_tokens += len(prompt)
        self.reused_tokens += reused
        if reused:
            for layer, cache in enumerate(caches):
                cache.append(torch.cat([self.blocks[key].kv[layer][0] for key in found], dim=1)[None],
                             torch.cat([self.blocks[key].kv[layer][1] for key in found], dim=1)[None])
        return reused

    def store(self, prompt: list[int], caches: list[KVCache]) -> None:
        """Keep the whole blocks of ``prompt`` from ``caches`` that hold its keys and values (batch row 0), then
        evict the least recently used blocks beyond ``max_bytes``."""
        chain = self._chain(prompt[: caches[0].length])
        for index, (key, parent, tokens) in enumerate(chain):
            if key not in self.blocks:
                at = slice(index * self.block, (index + 1) * self.block)
                kv = [(c.keys[0, :, at].clone(), c.values[0, :, at].clone()) for c in caches]
                self.blocks[key] = Block(parent, tokens, kv)
                self.bytes += _size(kv)
        self._touch([key for key, _, _ in chain])
        while self.bytes > self.max_bytes:
            self.bytes -= _size(self.blocks.popitem(last=False)[1].kv)
            self.evicted += 1

    def _touch(self, keys: list[int]) -> None:
        """Mark a chain used, its first block last: a prefix is evicted from its end, never from its start."""
        for key in reversed(keys):
            self.blocks.move_to_end(key)

    @property
    def hit_rate(self) -> float:
        """Share of prompt tokens whose keys and values came from the cache."""
        return self.reused_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


def _size(kv: KV) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
