"""The only module that knows Hugging Face names: configs and parameter names of GPT-2, Llama, Qwen2 and Mistral.

Both directions go through one table, :func:`weight_map`: each of our parameters is one Hugging Face
tensor (GPT-2's Conv1D stores (in, out), hence a transpose) or several concatenated along dim 0 (our
fused q/k/v projection and gate/up MLP). Import reads that table forwards (:func:`model_config` maps a
``config.json``), export backwards (:func:`hf_config`, :func:`hf_state_dict`). Everything is plain dicts
and tensors, so aigc itself does not need ``transformers``; ``to_transformers`` builds the live model
when it is installed (tests, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from aigc.config import ModelConfig
from aigc.errors import ConfigError

FAMILIES = ("gpt2", "llama", "qwen2", "mistral")  # the model_type values aigc imports
_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


@dataclass(frozen=True)
class Weight:
    """Our parameter ``ours`` is the Hugging Face tensors ``theirs`` concatenated along dim 0 (rows ``sizes``),
    transposed first when ``transpose`` (GPT-2's Conv1D)."""

    ours: str
    theirs: tuple[str, ...]
    sizes: tuple[int, ...] = ()
    transpose: bool = False


def family(config: ModelConfig) -> str:
    """Which Hugging Face ``model_type`` reproduces this config exactly: gpt2, llama, qwen2 or mistral."""
    if config.norm == "layernorm" and config.mlp != "swiglu" and config.position == "learned" and config.bias:
        if config.kv_heads != config.n_head:
            raise ConfigError("GPT-2 has no grouped-query attention; set model.n_kv_head = model.n_head to export")
        if config.head_dim * config.n_head != config.n_embd or config.qkv_bias is False:
            raise ConfigError("GPT-2 needs head_size = n_embd / n_head and a q/k/v bias; this model cannot be GPT-2")
        return "gpt2"
    if config.norm == "rmsnorm" and config.mlp == "swiglu" and config.position == "rope":
        if config.sliding_window is not None:
            return "mistral"
        if config.attention_bias and not config.bias:
            return "qwen2"
        if config.attention_bias != config.bias:
            raise ConfigError("a Llama-style model has a q/k/v bias exactly when it has the other biases (model.qkv_bias)")
        return "llama"
    raise ConfigError(
        "only GPT-2 style (layernorm, gelu or gelu_tanh, learned positions, bias) or Llama style (rmsnorm, swiglu, rope) "
        "models map to Hugging Face"
    )



def weight_map(config: ModelConfig) -> list[Weight]:
    """Every parameter of a GPT with ``config`` and the Hugging Face tensor(s) it is made of."""
    c, kind = config, family(config)
    q, kv = c.n_head * c.head_dim, c.kv_heads * c.head_dim
    table: list[Weight] = []
    if kind == "gpt2":
        table += [Weight("wte.weight", ("transformer.wte.weight",)), Weight("wpe.weight", ("transformer.wpe.weight",))]
        for i in range(c.n_layer):
            ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
            for a, b in {"norm1": "ln_1", "norm2": "ln_2"}.items():
                table += [Weight(f"{ours}{a}.{s}", (f"{theirs}{b}.{s}",)) for s in ("weight", "bias")]
            for a, b in {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc",
                         "mlp.proj": "mlp.c_proj"}.items():
                table += [Weight(f"{ours}{a}.weight", (f"{theirs}{b}.weight",), transpose=True),
                          Weight(f"{ours}{a}.bias", (f"{theirs}{b}.bias",))]
        table += [Weight(f"norm.{s}", (f"transformer.ln_f.{s}",)) for s in ("weight", "bias")]
    else:
        table.append(Weight("wte.weight", ("model.embed_tokens.weight",)))
        for i in range(c.n_layer):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            table += [Weight(f"{ours}norm1.weight", (f"{theirs}input_layernorm.weight",)),
                      Weight(f"{ours}norm2.weight", (f"{theirs}post_attention_layernorm.weight",))]
            attn, mlp = f"{theirs}self_attn.", f"{theirs}mlp."
            for suffix in ("weight", "bias"):
                if suffix == "weight" or c.attention_bias:
                    table.append(Weight(f"{ours}attn.qkv.{suffix}", tuple(f"{attn}{p}_proj.{suffix}" for p in "qkv"),
                                        (q, kv, kv)))
                if suffix == "weight" or c.bias:
                    table += [Weight(f"{ours}attn.proj.{suffix}", (f"{attn}o_proj.{suffix}",)),
                              Weight(f"{ours}mlp.fc.{suffix}", (f"{mlp}gate_proj.{suffix}", f"{mlp}up_proj.{suffix}"),
                                     (c.hidden, c.hidden)),
                              Weight(f"{ours}mlp.proj.{suffix}", (f"{mlp}down_proj.{suffix}",))]
        table.append(Weight("norm.weight", ("model.norm.weight",)))
    if not c.tie_embeddings:
        table.append(Weight("lm_head.weight", ("lm_head.weight",)))
    return table


def assemble(weight: Weight, tensors: list[torch.Tensor]) -> torch.Tensor:
    """Our parameter from its Hugging Face tensors (in ``weight.theirs`` order)."""
    if weight.transpose:
        tensors = [t.t() for t in tensors]
    return (tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)).contiguous()


def disassemble(weight: Weight, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The Hugging Face tensors of our parameter ``tensor`` (inverse of :func:`assemble`)."""
    parts = list(tensor.split(list(weight.sizes))) if weight.sizes else [tensor]
    return [(p.t() if weight.transpose else p).contiguous() for p in parts]


# ---- import: a Hugging Face config.json -> ModelConfig fields ----

def _need(hf: dict[str, Any], key: str) -> Any:
    if hf.get(key) is None:
        raise ConfigError(f"config.json has no '{key}'; it is not a complete {hf.get('model_type')} config")
    return hf[key]


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """RoPE base and scaling, from ``rope_theta`` + ``rope_scaling`` (transformers 4) or ``rope_parameters`` (5)."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or params
    theta = hf.get("rope_theta") or params.get("rope_theta") or 10000.0
    kind = scaling.get("rope_type") or scaling.get("type") or "default"
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ConfigError(f"rope scaling type '{kind}' is not supported; aigc implements 'llama3' (and none)")
    return float(theta), {"type": "llama3", "factor": scaling["factor"], "low_freq_factor": scaling["low_freq_factor"],
                          "high_freq_factor": scaling["high_freq_factor"],
                          "original_context": scaling["original_max_position_embeddings"]}


def _sliding_window(hf: dict[str, Any]) -> int | None:
    """The attention window, when the model really uses one (Qwen2 only with use_sliding_window / sliding layers)."""
    window = hf.get("sliding_window")
    if window is None:
        return None
    if hf["model_type"] == "qwen2":
        layer_types = hf.get("layer_types") or []
        if not hf.get("use_sliding_window") and "sliding_attention" not in layer_types:
            return None
    return int(window)


def model_config(hf: dict[str, Any]) -> dict[str, Any]:
    """``ModelConfig`` fields for a Hugging Face ``config.json`` mapping; a clear error for what we cannot compute."""
    kind = hf.get("model_type")
    if kind not in FAMILIES:
        raise ConfigError(f"model_type '{kind}' is not supported; aigc imports {', '.join(FAMILIES)}")
    if kind == "gpt2":
        activation = hf.get("activation_function", "gelu_new")
        if activation not in _GPT2_ACTIVATIONS:
            raise ConfigError(f"GPT-2 activation '{activation}' is not supported; use one of {', '.join(_GPT2_ACTIVATIONS)}")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn") or not hf.get(
                "scale_attn_weights", True):
            raise ConfigError("this GPT-2 scales its attention differently (scale_attn_by_inverse_layer_idx, "
                              "reorder_and_upcast_attn or scale_attn_weights=false); aigc does not implement that")
        return {"n_layer": _need(hf, "n_layer"), "n_head": _need(hf, "n_head"), "n_embd": _need(hf, "n_embd"),
                "block_size": _need(hf, "n_positions"), "vocab_size": _need(hf, "vocab_size"),
                "mlp_hidden": hf.get("n_inner"), "mlp": _GPT2_ACTIVATIONS[activation], "norm": "layernorm",
                "position": "learned", "bias": True, "norm_eps": hf.get("layer_norm_epsilon", 1e-5),
                "tie_embeddings": hf.get("tie_word_embeddings", True), "dropout": 0.0}
    if hf.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"activation '{hf['hidden_act']}' is not supported for {kind}; aigc's SwiGLU uses silu")
    heads, width = _need(hf, "num_attention_heads"), _need(hf, "hidden_size")
    head_size = hf.get("head_dim")
    theta, scaling = _rope(hf)
    if kind == "qwen2":
        qkv_bias, bias = True, False
    else:
        qkv_bias, bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
        if qkv_bias != bias:
            raise ConfigError(f"{kind} with attention_bias={qkv_bias} and mlp_bias={bias} is not supported; "
                              "aigc needs both the same")
    window = _sliding_window(hf)
    block = int(_need(hf, "max_position_embeddings"))
    explicit_head = head_size is not None and (head_size * heads != width or width % heads)
    return {"n_layer": _need(hf, "num_hidden_layers"), "n_head": heads, "n_embd": width,
            "n_kv_head": hf.get("num_key_value_heads") or heads,
            "head_size": head_size if explicit_head else None,
            "block_size": min(block, window) if window else block, "vocab_size": _need(hf, "vocab_size"),
            "mlp_hidden": _need(hf, "intermediate_size"), "mlp": "swiglu", "norm": "rmsnorm", "position": "rope",
            "rope_theta": theta, "rope_scaling": scaling, "bias": bias, "qkv_bias": None if qkv_bias == bias else qkv_bias,
            "norm_eps": hf.get("rms_norm_eps", 1e-6), "sliding_window": window,
            "tie_embeddings": hf.get("tie_word_embeddings", False), "dropout": 0.0}


# ---- export: ModelConfig -> a Hugging Face config.json, our weights -> theirs ----

def hf_config(config: ModelConfig) -> dict[str, Any]:
    """A Hugging Face ``config.json`` mapping for ``config``."""
    kind = family(config)
    common = {"vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings,
              "bos_token_id": config.bos_token_id, "pad_token_id": config.pad_token_id}
    if config.eos_token_ids:
        common["eos_token_id"] = config.eos_token_ids[0] if len(config.eos_token_ids) == 1 else config.eos_token_ids
    if kind == "gpt2":
        return common | {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "n_embd": config.n_embd,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
            "n_inner": config.hidden,
            "n_positions": config.block_size,
            "layer_norm_epsilon": config.norm_eps,
            "activation_function": "gelu_new" if config.mlp == "gelu_tanh" else "gelu",
            "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout,
            "attn_pdrop": config.dropout,
        }
    names = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
    out = common | {
        "model_type": kind,
        "architectures": [names[kind]],
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "hidden_act": "silu",
        "attention_dropout": config.dropout,
    }
    if config.rope_scaling is not None:
        s = config.rope_scaling
        out["rope_scaling"] = {"rope_type": s.type, "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_context}
    if kind == "llama":
        out |= {"attention_bias": config.bias, "mlp_bias": config.bias}
    if kind == "mistral":
        out["sliding_window"] = config.sliding_window
    return out


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names (a tied output projection is left to ``tie_word_embeddings``)."""
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for weight in weight_map(model.config):
        out.update(zip(weight.theirs, disassemble(weight, ours[weight.ours])))
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = ours["lm_head.weight"]
    return out


def to_transformers(model: torch.nn.Module) -> torch.nn.Module:
    """A live ``transformers`` model with our weights (needs the ``transformers`` package)."""
    import transformers

    mapping = hf_config(model.config)
    fields = {k: v for k, v in mapping.items() if k not in ("model_type", "architectures")}
    hf_model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(mapping["model_type"], **fields))
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    real_missing = [k for k in missing if not k.endswith("attn.bias") and k != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"weight names disagree with transformers: missing {real_missing}, unexpected {unexpected}")
    return hf_model.eval()
