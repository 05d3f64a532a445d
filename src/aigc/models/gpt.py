"""Decoder-only GPT: token (+ position) embedding, L pre-norm Transformer blocks, final norm, LM head.

One class covers both families, chosen by :class:`~aigc.config.ModelConfig`:

==========  ===========================  ===============================
option      GPT-2 style                  Llama style
==========  ===========================  ===============================
norm        layernorm                    rmsnorm
mlp         gelu_tanh (4C)               swiglu (~8C/3)
position    learned (wpe)                rope
bias        true                         false
heads       n_kv_head = n_head           n_kv_head < n_head (GQA)
==========  ===========================  ===============================

Imported families (:mod:`aigc.pretrained`) are these with a few more options: Qwen2 is Llama with
``qkv_bias`` and an explicit ``head_size``; Llama 3.1 adds ``rope_scaling`` (llama3); Mistral is Llama
whose ``block_size`` may not pass its ``sliding_window``.

Each block computes ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.

A kind of run may add to the input embedding (``extras``, built from the config): the caption-prefix image
model gives pixel positions row and column embeddings (:mod:`aigc.tasks.images.model`), the speech model the
codebook level each position predicts (:mod:`aigc.tasks.speech.model`); buffers that must travel with the
weights (a palette, codebooks) live there too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from aigc.config import ModelConfig
from aigc.models.layers import MLP, KVCache, Linear, RotaryEmbedding, SelfAttention, init_weights, make_norm


class Block(nn.Module):
    """Pre-norm Transformer block: causal self-attention then MLP, each added to the residual stream."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(config)
        self.attn = SelfAttention(config, causal=True)
        self.norm2 = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope=None, cache: KVCache | None = None, mask=None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), rope, cache, mask))
        return x + self.dropout(self.mlp(self.norm2(x)))


InputExtras = Callable[[ModelConfig], nn.Module]
"""What a kind of run adds to a GPT's input: built from the config, it maps positions (B, T) or (T,) to
embeddings (.., C) added to the token embeddings."""


class GPT(nn.Module):
    """A causal language model over token ids; ``config.vocab_size`` must be set (from the tokenizer).
    ``extras``: the kind's additions to the input embedding (:data:`InputExtras`), or None."""

    def __init__(self, config: ModelConfig, extras: InputExtras | None = None):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is unset; it comes from the tokenizer")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.rope = (
            RotaryEmbedding(config.head_dim, config.block_size, config.rope_theta, config.rope_scaling)
            if config.position == "rope" else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.extras = extras(config) if extras is not None else None  # built last: initialisation draws in one order
        init_weights(self, config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        caches: list[KVCache] | None = None,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        hidden: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V), or the mean cross-entropy against ``targets`` (B, T) when given, or with ``hidden``
        the final-norm hidden states (B, T, C) that the output projection would turn into logits.

        ``idx`` (B, T) token ids. ``caches`` (one per block) make this an incremental step: positions
        continue from what is cached. ``positions`` (B, T), each below ``block_size``, overrides them
        (left-padded batches), and ``mask`` (B, 1, T, S) bool then says which keys each query may see.
        ``last_only`` computes logits for the final position only, (B, 1, V), which is all decoding needs.
        """
        B, T = idx.shape
        if positions is None:  # given, they count each row's real tokens: a padded cache may be longer than that
            start = caches[0].length if caches else 0
            if start + T > self.config.block_size:
                raise ValueError(f"cannot attend to {start + T} positions; the model's block_size is {self.config.block_size}")
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        if self.extras is not None:
            x = x + self.extras(positions)
        rope = self.rope(positions) if self.rope is not None else None
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, caches[i] if caches else None, mask)
        x = self.norm(x)
        if hidden:
            return x
        if targets is not None:
            logits = self.lm_head(x)
            return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
        return self.lm_head(x[:, -1:] if last_only else x)

    def new_caches(self, batch: int, capacity: int | None = None) -> list[KVCache]:
        """One empty KV cache per block, preallocated for ``capacity`` positions (default block_size)."""
        param = self.wte.weight
        capacity = capacity or self.config.block_size
        c = self.config
        return [KVCache(batch, c.kv_heads, c.head_dim, capacity, param.dtype, param.device) for _ in self.blocks]

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; by default without position embeddings (as in nanoGPT's estimate)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding and self.wpe is not None:
            total -= self.wpe.weight.numel()
        return total

    def flops_per_token(self, context: int | None = None) -> int:
        """Training FLOPs per token: 6N for the weights plus 12 L C T for attention scores (PaLM appendix B)."""
        c = self.config
        context = context or c.block_size
        return 6 * self.num_params() + 12 * c.n_layer * c.n_embd * context
