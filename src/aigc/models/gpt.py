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

With ``image_size`` set it is also the caption-prefix image model: a sequence is the caption's tokens
(``image_prefix`` of them, left-padded) followed by the pixel tokens, and pixel positions get row and
column embeddings on top of the 1-D ones. With ``audio_codes`` set it is the caption-prefix speech model:
the text's tokens (``audio_prefix``, left-padded), then one token per log-mel frame and codebook level; the
``codebook`` buffer (levels, codes, mels) turns audio tokens back into frames, and with several levels each
position also learns which level it predicts.
"""

from __future__ import annotations

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


class GPT(nn.Module):
    """A causal language model over token ids; ``config.vocab_size`` must be set (from the tokenizer)."""

    def __init__(self, config: ModelConfig):
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
        if config.image_size:  # a caption-prefix image model: the pixels get row and column positions too
            self.image_rows = nn.Embedding(config.image_size, config.n_embd)
            self.image_cols = nn.Embedding(config.image_size, config.n_embd)
            # the RGB colour of each pixel token (the last image_colors ids): travels with the weights
            self.register_buffer("palette", torch.zeros(config.image_colors or 2, 3, dtype=torch.uint8))
        if config.audio_codes:  # a caption-prefix speech model: each audio token's log-mel frame travels with the weights
            levels = config.audio_levels or 1
            self.register_buffer("codebook", torch.zeros(levels, config.audio_codes, config.audio_mels or 1))
            self.audio_level = nn.Embedding(levels, config.n_embd) if levels > 1 else None
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
        if self.config.image_size:
            x = x + self._pixel_positions(positions)
        if self.config.audio_codes and self.audio_level is not None:
            x = x + self._audio_levels(positions)
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

    def _pixel_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Row + column embeddings of the pixel each position predicts, (.., C); zero on caption positions.

        Sequences are ``image_prefix`` caption tokens then the pixels in raster order, so position p
        predicts pixel ``p - image_prefix + 1``.
        """
        side, prefix = self.config.image_size, self.config.image_prefix or 1
        pixel = positions - (prefix - 1)
        index = pixel.clamp(0, side * side - 1)
        embedding = self.image_rows(index // side) + self.image_cols(index % side)
        return embedding * (pixel >= 0).unsqueeze(-1)

    def _audio_levels(self, positions: torch.Tensor) -> torch.Tensor:
        """The embedding of the codebook level each position predicts, (.., C); zero on text positions."""
        frame_token = positions - ((self.config.audio_prefix or 1) - 1)
        embedding = self.audio_level(frame_token.clamp(min=0) % (self.config.audio_levels or 1))
        return embedding * (frame_token >= 0).unsqueeze(-1)

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
