"""The only module that knows llama.cpp's names: GGUF architectures, hyperparameter keys and tensor names.

Both directions go through one table, :func:`tensor_map`: each GGUF tensor is a block of rows of one of
our parameters (our fused q/k/v projection and gate/up MLP are split into llama.cpp's ``attn_q``,
``attn_k``, ``attn_v``, ``ffn_gate``, ``ffn_up``). Llama's query and key rows are also reordered:
llama.cpp's ``llama`` architecture rotates interleaved pairs of a head's dimensions (Meta's original
layout), Hugging Face and aigc rotate its two halves, so export applies llama.cpp's own
``convert_hf_to_gguf`` permutation and import undoes it. Qwen2 rotates halves in llama.cpp too (its
"neox" RoPE), so nothing moves there. Shapes are PyTorch's (out, in); GGUF stores them reversed, which
the ``gguf`` package handles.

Mistral is written as ``llama`` (as llama.cpp's converter does): aigc caps its context at the sliding
window, inside which windowed and full attention agree. So is a Qwen2 whose head size is not width /
heads: llama.cpp's ``qwen2`` assumes it is, its ``llama`` takes any head size and q/k/v biases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from aigc.config import ModelConfig
from aigc.errors import ConfigError
from aigc.models.hf import family

ARCHITECTURES = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "qwen2"}  # our family -> GGUF


@dataclass(frozen=True)
class GgufTensor:
    """GGUF tensor ``name`` is rows ``start:stop`` of our parameter ``ours`` (all rows when ``stop`` is None),
    with the rows of each of ``heads`` heads reordered from halves to interleaved pairs when ``heads``."""

    name: str
    ours: str
    start: int = 0
    stop: int | None = None
    heads: int | None = None


def architecture(config: ModelConfig) -> str:
    """The GGUF ``general.architecture`` that runs ``config`` as aigc does; a clear error otherwise."""
    kind = family(config)
    if kind == "qwen2" and config.head_dim * config.n_head != config.n_embd:
        return "llama"  # llama.cpp's qwen2 assumes head size = width / heads; its llama takes any, and q/k/v biases
    if kind == "gpt2" and config.mlp != "gelu_tanh":
        raise ConfigError("llama.cpp's gpt2 uses the tanh approximation of GELU; this model was trained with exact "
                          "GELU (model.mlp=gelu), so it would run differently there. Train with model.mlp=gelu_tanh "
                          "to export to GGUF, or export a Hugging Face folder instead")
    return ARCHITECTURES[kind]


def tensor_map(config: ModelConfig) -> list[GgufTensor]:
    """Every GGUF tensor of a model with ``config``, in llama.cpp's order, and where it lives in ours."""
    arch, c = architecture(config), config
    q, kv = c.n_head * c.head_dim, c.kv_heads * c.head_dim
    table = [GgufTensor("token_embd.weight", "wte.weight")]
    if arch == "gpt2":
        table.append(GgufTensor("position_embd.weight", "wpe.weight"))
    for i in range(c.n_layer):
        blk, ours = f"blk.{i}.", f"blocks.{i}."
        suffixes = ("weight", "bias") if arch == "gpt2" else ("weight",)
        table += [GgufTensor(f"{blk}attn_norm.{s}", f"{ours}norm1.{s}") for s in suffixes]
        if arch == "gpt2":
            for s in suffixes:
                table += [GgufTensor(f"{blk}attn_qkv.{s}", f"{ours}attn.qkv.{s}"),
                          GgufTensor(f"{blk}attn_output.{s}", f"{ours}attn.proj.{s}")]
            table += [GgufTensor(f"{blk}ffn_norm.{s}", f"{ours}norm2.{s}") for s in suffixes]
            for s in suffixes:
                table += [GgufTensor(f"{blk}ffn_up.{s}", f"{ours}mlp.fc.{s}"),
                          GgufTensor(f"{blk}ffn_down.{s}", f"{ours}mlp.proj.{s}")]
            continue
        rotate = arch == "llama"  # llama.cpp's llama rotates interleaved pairs: move the rows
        for s in ("weight", "bias") if c.attention_bias else ("weight",):
            table += [GgufTensor(f"{blk}attn_q.{s}", f"{ours}attn.qkv.{s}", 0, q, c.n_head if rotate else None),
                      GgufTensor(f"{blk}attn_k.{s}", f"{ours}attn.qkv.{s}", q, q + kv, c.kv_heads if rotate else None),
                      GgufTensor(f"{blk}attn_v.{s}", f"{ours}attn.qkv.{s}", q + kv, q + 2 * kv)]
        table += [GgufTensor(f"{blk}attn_output.{s}", f"{ours}attn.proj.{s}") for s in _biased(c)]
        table.append(GgufTensor(f"{blk}ffn_norm.weight", f"{ours}norm2.weight"))
        for s in _biased(c):
            table += [GgufTensor(f"{blk}ffn_gate.{s}", f"{ours}mlp.fc.{s}", 0, c.hidden),
                      GgufTensor(f"{blk}ffn_up.{s}", f"{ours}mlp.fc.{s}", c.hidden, 2 * c.hidden),
                      GgufTensor(f"{blk}ffn_down.{s}", f"{ours}mlp.proj.{s}")]
    table += [GgufTensor(f"output_norm.{s}", f"norm.{s}") for s in (("weight", "bias") if arch == "gpt2" else ("weight",))]
    if not c.tie_embeddings:
        table.append(GgufTensor("output.weight", "lm_head.weight"))
    return table


def _biased(config: ModelConfig) -> tuple[str, ...]:
    return ("weight", "bias") if config.bias else ("weight",)


def _interleave(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """Each head's rows from [first half | second half] to pairs (h0, h_half, h1, h_half+1, ...): llama.cpp's
    ``LlamaModel.permute``. ``rows`` (heads * head_dim, ...)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _halve(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of :func:`_interleave`."""
    return rows.reshape(heads, rows.shape[0] // heads // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def to_gguf(state: dict[str, torch.Tensor], config: ModelConfig) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for every tensor of the model, from our ``state`` (float32, contiguous), plus
    llama.cpp's ``rope_freqs`` for Llama 3.1's RoPE scaling."""
    out = []
    for entry in tensor_map(config):
        tensor = state[entry.ours][entry.start:entry.stop].float()
        if entry.heads:
            tensor = _interleave(tensor, entry.heads)
        out.append((entry.name, tensor.contiguous()))
    if config.rope_scaling is not None:
        out.append(("rope_freqs.weight", rope_factors(config)))
    return out


def from_gguf(tensors: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict from GGUF tensors (PyTorch shapes); a clear error naming the first missing tensor."""
    parts: dict[str, list[torch.Tensor]] = {}
    for entry in tensor_map(config):
        if entry.name not in tensors:
            raise ConfigError(f"the GGUF file has no tensor {entry.name}, which its metadata implies")
        tensor = tensors[entry.name]
        parts.setdefault(entry.ours, []).append(_halve(tensor, entry.heads) if entry.heads else tensor)
    return {name: torch.cat(pieces) if len(pieces) > 1 else pieces[0] for name, pieces in parts.items()}


def rope_factors(config: ModelConfig) -> torch.Tensor:
    """Llama 3.1's RoPE scaling as llama.cpp reads it: one divisor per frequency, (head_dim / 2,) float32."""
    s, dim = config.rope_scaling, config.head_dim
    freqs = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    low, high = s.original_context / s.low_freq_factor, s.original_context / s.high_freq_factor
    factors = []
    for freq in freqs.tolist():
        wavelength = 2 * math.pi / freq
        if wavelength < high:
            factors.append(1.0)
        elif wavelength > low:
            factors.append(s.factor)
        else:
            smooth = (s.original_context / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
            factors.append(1 / ((1 - smooth) / s.factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def hyperparameters(config: ModelConfig) -> dict[str, Any]:
    """``{arch}.*`` metadata (without the prefix) that llama.cpp reads to build the model."""
    arch, c = architecture(config), config
    out: dict[str, Any] = {"context_length": c.block_size, "embedding_length": c.n_embd, "block_count": c.n_layer,
                           "feed_forward_length": c.hidden, "attention.head_count": c.n_head}
    if arch == "gpt2":
        return out | {"attention.layer_norm_epsilon": float(c.norm_eps)}
    out |= {"attention.head_count_kv": c.kv_heads, "attention.layer_norm_rms_epsilon": float(c.norm_eps),
            "attention.key_length": c.head_dim, "attention.value_length": c.head_dim,
            "rope.dimension_count": c.head_dim, "rope.freq_base": float(c.rope_theta), "vocab_size": c.vocab_size}
    if c.rope_scaling is not None:
        # the factors travel as the rope_freqs tensor (as llama.cpp's converter writes them); rope.scaling.factor
        # would make llama.cpp scale every frequency linearly on top. The original context only serves YaRN
        # there, and lets an import recover the llama3 rule.
        out["rope.scaling.original_context_length"] = c.rope_scaling.original_context
    return out


def model_fields(arch: str, hparams: dict[str, Any], rope_freqs: torch.Tensor | None, vocab_size: int,
                 has_output: bool, has_bias: dict[str, bool]) -> dict[str, Any]:
    """``ModelConfig`` fields for a GGUF file's ``{arch}.*`` metadata (the inverse of :func:`hyperparameters`).

    ``has_bias`` says which bias tensors the file holds (``qkv``, ``other``); ``rope_freqs`` is its
    Llama 3.1 scaling tensor, if any, which is matched against the llama3 rule.
    """
    if arch not in set(ARCHITECTURES.values()):
        raise ConfigError(f"GGUF architecture '{arch}' is not supported; aigc imports gpt2, llama and qwen2")

    def need(key: str) -> Any:
        if key not in hparams:
            raise ConfigError(f"the GGUF file has no {arch}.{key}; it is not a complete {arch} model")
        return hparams[key]

    fields: dict[str, Any] = {"n_layer": need("block_count"), "n_head": need("attention.head_count"),
                              "n_embd": need("embedding_length"), "block_size": need("context_length"),
                              "vocab_size": vocab_size, "mlp_hidden": need("feed_forward_length"),
                              "tie_embeddings": not has_output, "dropout": 0.0}
    if arch == "gpt2":
        return _default_width(fields | {"mlp": "gelu_tanh", "norm": "layernorm", "position": "learned", "bias": True,
                                        "norm_eps": need("attention.layer_norm_epsilon")})
    head = hparams.get("attention.key_length") or fields["n_embd"] // fields["n_head"]
    if hparams.get("rope.dimension_count", head) != head or hparams.get("attention.value_length", head) != head:
        raise ConfigError("the GGUF model rotates only part of each head or has values of another size than keys; "
                          "aigc's attention does not implement that")
    fields |= {"n_kv_head": hparams.get("attention.head_count_kv") or fields["n_head"],
               "head_size": head if head * fields["n_head"] != fields["n_embd"] else None,
               "mlp": "swiglu", "norm": "rmsnorm", "position": "rope",
               "rope_theta": float(hparams.get("rope.freq_base", 10000.0)),
               "norm_eps": need("attention.layer_norm_rms_epsilon"), "bias": has_bias["other"],
               "qkv_bias": has_bias["qkv"] if has_bias["qkv"] != has_bias["other"] else None}
    if hparams.get("rope.scaling.type", "none") not in ("none", "linear") or hparams.get("rope.scaling.factor", 1) != 1:
        raise ConfigError(f"RoPE scaling '{hparams.get('rope.scaling.type', 'linear')}' with factor "
                          f"{hparams.get('rope.scaling.factor', 1)} is not supported; aigc implements llama3's (rope_freqs)")
    if rope_freqs is not None:
        fields["rope_scaling"] = _llama3_scaling(fields, hparams, rope_freqs)
    return _default_width(fields)


def _default_width(fields: dict[str, Any]) -> dict[str, Any]:
    """``mlp_hidden`` left unset when it is what ``ModelConfig`` would compute anyway (as a run trained here has it)."""
    if ModelConfig(**(fields | {"mlp_hidden": None})).hidden == fields["mlp_hidden"]:
        fields["mlp_hidden"] = None
    return fields


def _llama3_scaling(fields: dict[str, Any], hparams: dict[str, Any], rope_freqs: torch.Tensor) -> dict[str, Any]:
    """The llama3 scaling settings whose factors are ``rope_freqs``. llama.cpp keeps only the factors, so the
    rule is rebuilt from them: its factor is the largest, the original context comes from the metadata (aigc's
    export writes it), and the low/high frequency factors are taken as Llama 3.1's 1 and 4. Every factor is
    then recomputed and compared: any other rule is refused, never imported as a different model."""
    factor = float(rope_freqs.max())
    original = int(hparams.get("rope.scaling.original_context_length") or 8192)
    candidate = {"type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_context": original}
    probe = ModelConfig(**fields, rope_scaling=candidate)
    if not torch.allclose(rope_factors(probe), rope_freqs.float(), rtol=1e-5, atol=1e-6):
        raise ConfigError("the GGUF file's rope_freqs are not Llama 3.1's scaling with its usual low/high frequency "
                          "factors (1 and 4); aigc cannot recompute them")
    return candidate
