"""Weight-only int8 quantization for inference: each ``nn.Linear`` weight as int8 with one scale per output row.

Decoding one token reads every weight once, so on a CPU its speed is the weight bytes over the memory
bandwidth: int8 weights are a quarter of float32's bytes and half of bfloat16's. Activations,
embeddings, norms and the KV cache keep the model's dtype; only the matrix products change.

Why our own small module and not ``torchao``: torchao 0.18 (the newest) with torch 2.13 on CPU fails
to load its compiled extensions, warns on import, and its ``Int8WeightOnlyConfig`` linear measured
2.3x *slower* than the dense float32 one on this machine (a 3072x768 product at batch 1: 280 us
against 122 us), while torch's own ``_weight_int8pack_mm`` kernel (the one gpt-fast uses) takes 35 us.
That kernel wants contiguous bfloat16 activations and bfloat16 scales, so the product runs in bfloat16
and is cast back. It does not check its shapes: with ``in_features`` not a multiple of 16 (8, 24, 40,
67, 72, 100) it returned inf/NaN or crashed the process (torch 2.13), so such layers dequantize instead.
Several rows (a prompt) dequantize instead, to float32 on a CPU without bfloat16 instructions (AVX2), where
torch's bfloat16 GEMM is emulated at a seventh of float32's rate. Off the CPU every call dequantizes to bfloat16:
int8 saves neither time nor peak memory there yet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aigc.errors import ConfigError
from aigc.models.layers import cpu_has_bf16

QUANTIZE_MODES = ("int8",)
PACKED_MAX_ROWS = 16  # up to this many rows (decode steps) the int8 kernel wins; a prefill dequantizes once instead
PACKED_IN_MULTIPLE = 16  # the int8 kernel is only correct for in_features divisible by this


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as int8 ``q`` (out, in) and a bfloat16 ``scale`` (out,): ``W ~ q * scale``.

    Symmetric per-row quantization: ``scale = max|W_row| / 127`` (rounded to bfloat16 first, so that ``q``
    is chosen for the scale actually used), ``q = round(W / scale)`` in [-127, 127].
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1).clamp(min=1e-12) / 127).to(torch.bfloat16)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = linear.in_features % PACKED_IN_MULTIPLE == 0
        self.register_buffer("weight", torch.round(weight / scale.float()[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) in any float dtype -> (..., out) in the same dtype."""
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # the kernel reads rows densely
        cpu = rows.device.type == "cpu"
        if self.packed and cpu and rows.shape[0] <= PACKED_MAX_ROWS:
            out = torch._weight_int8pack_mm(rows, self.weight, self.scale)
        elif cpu and not cpu_has_bf16():  # bf16 GEMM emulated on AVX2: a seventh of float32's rate
            out = F.linear(rows.float(), self.weight.float()) * self.scale.float()
        else:
            out = F.linear(rows, self.weight.to(torch.bfloat16)) * self.scale
        out = out.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


def quantize_model(model: nn.Module, mode: str | None) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by its ``mode`` form and return the model; None: unchanged.

    A tied output projection gets its own int8 copy; the embedding it shares weights with keeps its dtype.
    """
    if mode is None:
        return model
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANTIZE_MODES)}")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):  # ours (layers.Linear) included; LoRA's wrappers are not
                setattr(parent, name, Int8Linear(child).to(child.weight.device))
    return model
