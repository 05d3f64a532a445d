"""The encoder-decoder Transformer of "Attention Is All You Need", from the same layers as the GPT.

The encoder reads the whole source at once (self-attention that sees every non-padding source token)
and returns one vector per source token, the *memory*. The decoder writes the target one token at a
time: causal self-attention over what it wrote so far, then cross-attention whose queries come from
the decoder and whose keys and values come from the memory, then the MLP. One joint vocabulary; the
encoder and decoder share one embedding table unless ``model.share_embeddings`` is false, and the
output projection is tied to the decoder's when ``model.tie_embeddings``.

Shapes: S = source tokens, T = target tokens, C = width, V = vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from aigc.config import ModelConfig
from aigc.models.layers import MLP, CrossAttention, KVCache, Linear, RotaryEmbedding, SelfAttention, init_weights, \
    make_norm


class EncoderBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(config), SelfAttention(config, causal=False)
        self.norm2, self.mlp = make_norm(config), MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), rope, mask=mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


class DecoderBlock(nn.Module):
    # Methods besides forward that use the block's weights: sharded training gathers them for these calls too.
    extra_forward_methods = ("memory",)

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1, self.attn = make_norm(config), SelfAttention(config, causal=True)
        self.norm2, self.cross = make_norm(config), CrossAttention(config)
        self.norm3, self.mlp = make_norm(config), MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output (B, S, C) -> this block's cross-attention keys and values, computed once per source."""
        return self.cross.memory(memory)

    def forward(self, x, rope, memory_kv, memory_mask, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), rope, cache))
        x = x + self.dropout(self.cross(self.norm2(x), memory_kv, memory_mask))
        return x + self.dropout(self.mlp(self.norm3(x)))


class Seq2Seq(nn.Module):
    """Encoder-decoder over one joint vocabulary; ``config.vocab_size`` comes from the tokenizer."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is unset; it comes from the tokenizer")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # the decoder's (and the encoder's when shared)
        self.source_wte = None if config.share_embeddings else nn.Embedding(config.vocab_size, config.n_embd)
        learned = config.position == "learned"
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if learned else None
        self.rope = None if learned else RotaryEmbedding(config.head_dim, config.block_size, config.rope_theta)
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_encoder_layer or config.n_layer))
        self.encoder_norm = make_norm(config)
        self.decoder = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        init_weights(self, len(self.encoder) + len(self.decoder))
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def _embed(self, ids: torch.Tensor, start: int = 0, table: nn.Embedding | None = None):
        T = ids.shape[1]
        if start + T > self.config.block_size:
            raise ValueError(f"cannot attend to {start + T} positions; the model's block_size is {self.config.block_size}")
        positions = torch.arange(start, start + T, device=ids.device)
        x = (table or self.wte)(ids)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        return self.drop(x), (self.rope(positions) if self.rope is not None else None)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Source ids (B, S) and its bool mask (B, S, True = token) -> per-layer cross K/V and (B, 1, 1, S) mask.

        The cross-attention keys and values of every decoder layer are computed here once, so each
        decoding step only projects its query.
        """
        mask = src_mask[:, None, None, :]
        x, rope = self._embed(src, table=self.source_wte)
        for block in self.encoder:
            x = block(x, rope, mask)
        memory = self.encoder_norm(x)  # (B, S, C)
        return [block.memory(memory) for block in self.decoder], mask

    def decode(self, tgt: torch.Tensor, memory_kv: list, memory_mask: torch.Tensor,
               caches: list[KVCache] | None = None, last_only: bool = False) -> torch.Tensor:
        """Target ids (B, T) -> logits (B, T, V); with ``caches`` positions continue from what is cached."""
        x, rope = self._embed(tgt, caches[0].length if caches else 0)
        for i, block in enumerate(self.decoder):
            x = block(x, rope, memory_kv[i], memory_mask, caches[i] if caches else None)
        x = self.norm(x)
        return self.lm_head(x[:, -1:] if last_only else x)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) for every target position."""
        memory_kv, memory_mask = self.encode(src, src_mask)
        return self.decode(tgt, memory_kv, memory_mask)

    def new_caches(self, batch: int, capacity: int | None = None) -> list[KVCache]:
        c, param = self.config, self.wte.weight
        capacity = capacity or c.block_size
        return [KVCache(batch, c.kv_heads, c.head_dim, capacity, param.dtype, param.device) for _ in self.decoder]

    def num_params(self, non_embedding: bool = True) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - (self.wpe.weight.numel() if non_embedding and self.wpe is not None else 0)

    def flops_per_token(self, context: int | None = None) -> int:
        c = self.config
        return 6 * self.num_params() + 12 * (len(self.encoder) + 2 * len(self.decoder)) * c.n_embd * (context or c.block_size)
