"""Building blocks shared by every aigc Transformer: norms, rotary positions, attention, MLPs, KV cache.

Shapes use B = batch, T = new tokens in this call, S = all key positions (cache + new), C = model
width, H = query heads, Hkv = key/value heads, D = head size (C // H unless model.head_size says).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from aigc.config import ModelConfig, RopeScaling


def make_norm(config: ModelConfig) -> nn.Module:
    """LayerNorm (GPT-2; bias per ``config.bias``) or RMSNorm (Llama) over the last dimension."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


WIDEN_ABOVE_ROWS = 16  # bf16 products of more rows than this run in float32 on a CPU without bf16 instructions


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); most laptops (AVX2) do not."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


class Linear(nn.Linear):
    """``nn.Linear`` with two bfloat16 paths for inference on a CPU.

    - One row (decoding one token) is a matrix-vector product (``torch.mv``): ``F.linear`` sends it to a GEMM
      that is slower; with mv, a SmolLM2-shaped bf16 decode went from 15.7 to 19.7 tokens/s (torch 2.13, 2
      AVX-512 cores, docs/pretrained.md).
    - More than ``WIDEN_ABOVE_ROWS`` rows (a prompt) on a CPU without bfloat16 instructions are multiplied in
      float32, the weights widened for the call: torch's bfloat16 GEMM emulated on AVX2 runs at about a seventh
      of its float32 rate, and widening costs one pass over the weights (docs/pretrained.md, "Speed"). A decode
      batch (up to 16 rows) stays in bfloat16: widened, a Qwen2.5-shaped batch of 8 decoded 15.6 -> 9.5 tok/s.

    Float32, training and other devices take ``F.linear`` as before.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(.., in) -> (.., out)."""
        if x.dtype != torch.bfloat16 or x.device.type != "cpu" or self.training:
            return super().forward(x)
        if x.numel() == x.shape[-1]:
            y = torch.mv(self.weight, x.reshape(-1))
            if self.bias is not None:
                y = y + self.bias
            return y.view(*x.shape[:-1], self.out_features)
        if x.numel() <= WIDEN_ABOVE_ROWS * x.shape[-1] or cpu_has_bf16():
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return F.linear(x.float(), self.weight.float(), bias).to(torch.bfloat16)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding tables (RoPE, Su et al. 2021) in the "rotate half" layout of Llama/HF.

    Channel pairs (i, i + D/2) of queries and keys are rotated by angle ``pos * theta^(-2i/D)``, so the
    dot product of a query and a key depends only on their distance.
    """

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: RopeScaling | None = None):
        super().__init__()
        self.head_dim, self.max_positions, self.theta, self.scaling = head_dim, max_positions, theta, scaling
        self.register_buffer("cos", torch.empty(max_positions, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_positions, head_dim), persistent=False)
        self.reset_tables()

    def reset_tables(self) -> None:
        """(Re)compute the cos/sin tables (P, D), in float32 on their device: they are not saved with the weights,
        so a model built without initialisation (:func:`aigc.models.empty_model`) computes them here."""
        device = self.cos.device
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        if self.scaling is not None:
            inv_freq = llama3_frequencies(inv_freq, self.scaling)
        angles = torch.outer(torch.arange(self.max_positions, dtype=torch.float32), inv_freq)  # (P, D/2)
        angles = torch.cat([angles, angles], dim=-1)  # (P, D)
        self.cos, self.sin = angles.cos().to(device), angles.sin().to(device)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for ``positions`` (T,) or (B, T) -> each (T, D) or (B, 1, T, D), broadcastable over heads."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin


def llama3_frequencies(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama 3.1's rule (D/2,) -> (D/2,): wavelengths longer than ``original / low_freq_factor`` are stretched
    by ``factor``, shorter than ``original / high_freq_factor`` kept, and the band between blended linearly."""
    low_wavelen = scaling.original_context / scaling.low_freq_factor
    high_wavelen = scaling.original_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, blended, scaled)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys; ``cos``/``sin`` broadcast to (.., T, D)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # as transformers does: bf16 activations stay bf16
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of one attention layer for incremental decoding.

    Storage is preallocated for ``capacity`` positions (a static cache, no copies while decoding) and
    doubles when a longer sequence arrives (a growing cache). ``length`` is how many positions are filled.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device: torch.device):
        shape = (batch, kv_heads, max(capacity, 1), head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, Hkv, T, D) new keys/values; return all keys/values so far, (B, Hkv, S, D)."""
        end = self.length + k.shape[2]
        if end > self.keys.shape[2]:
            grow = max(end, 2 * self.keys.shape[2]) - self.keys.shape[2]
            pad = (0, 0, 0, grow)
            self.keys, self.values = F.pad(self.keys, pad), F.pad(self.values, pad)
        self.keys[:, :, self.length : end] = k
        self.values[:, :, self.length : end] = v
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def reorder(self, order: torch.Tensor) -> None:
        """Keep rows ``order`` (B,) of the batch, in that order (beam search follows surviving parents)."""
        self.keys, self.values = self.keys.index_select(0, order), self.values.index_select(0, order)


class SelfAttention(nn.Module):
    """Multi-head self-attention, softmax(Q K^T / sqrt(D) + mask) V, with grouped-query heads and RoPE.

    Q, K and V come from one fused projection (C -> (H + 2 Hkv) D), with a bias when
    ``config.attention_bias`` (Qwen2 has it there only). With ``n_kv_head < n_head`` each key/value head
    serves ``n_head / n_kv_head`` query heads (GQA); equal counts are classic multi-head.
    """

    def __init__(self, config: ModelConfig, causal: bool = True):
        super().__init__()
        self.n_head, self.kv_heads, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.causal = causal
        self.qkv = Linear(config.n_embd, (self.n_head + 2 * self.kv_heads) * self.head_dim, bias=config.attention_bias)
        self.proj = Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, T, C) -> (B, T, C). ``mask``: bool (B or 1, 1, T, S), True = may attend; replaces causality."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, *(2 * [self.kv_heads * self.head_dim])], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        past = cache.length if cache is not None else 0
        if cache is not None:
            k, v = cache.append(k, v)  # (B, Hkv, S, D)
        # Causal masking: with nothing cached, SDPA's is_causal; with a cache, new token t sees keys <= past + t.
        is_causal = self.causal and mask is None and past == 0 and T > 1
        if self.causal and mask is None and past > 0 and T > 1:
            mask = causal_mask(T, past, x.device)
        # GQA: SDPA lets each key/value head serve n_head / kv_heads query heads, without copying the cache
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal,
            enable_gqa=self.kv_heads != self.n_head,
        )  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention: queries from the decoder (B, T, C), keys and values from the memory (B, S, C).

    softmax(Q K^T / sqrt(D) + M) V where M hides source padding. The memory's keys/values are computed
    once per source by :meth:`memory` and reused at every decoding step.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head, self.kv_heads, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        self.q = Linear(config.n_embd, self.n_head * self.head_dim, bias=config.bias)
        self.kv = Linear(config.n_embd, 2 * self.kv_heads * self.head_dim, bias=config.bias)
        self.proj = Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def memory(self, encoded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, C) encoder output -> keys, values, each (B, H, S, D) (GQA heads already repeated)."""
        B, S, _ = encoded.shape
        k, v = self.kv(encoded).view(B, S, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.kv_heads != self.n_head:
            repeat = self.n_head // self.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        return k, v

    def forward(self, x: torch.Tensor, memory: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); ``mask`` bool (B, 1, 1, S), True = a real source token."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, *memory, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


def causal_mask(new: int, past: int, device: torch.device) -> torch.Tensor:
    """Bool (1, 1, new, past + new): query t may attend to keys 0 .. past + t."""
    keys = torch.arange(past + new, device=device)
    queries = torch.arange(past, past + new, device=device)
    return (keys[None, :] <= queries[:, None])[None, None]


class MLP(nn.Module):
    """Position-wise feed-forward: GELU (exact, or GPT-2's tanh approximation) or SwiGLU (Llama: down(silu(gate) * up))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gated = config.mlp == "swiglu"
        self.approximate = "tanh" if config.mlp == "gelu_tanh" else "none"
        width = config.hidden
        self.fc = Linear(config.n_embd, (2 if self.gated else 1) * width, bias=config.bias)
        self.proj = Linear(width, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C)."""
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.proj(h)


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) weights, zero biases; residual output projections N(0, 0.02/sqrt(2L)).

    Scaling the projections that write into the residual stream keeps its variance from growing with depth.
    """
    for name, param in module.named_parameters():
        if param.dim() < 2:
            if name.endswith("bias"):
                nn.init.zeros_(param)
            continue
        std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
        nn.init.normal_(param, mean=0.0, std=std)
