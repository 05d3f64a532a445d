"""The only module that knows Hugging Face parameter names: export a GPT as ``GPT2LMHeadModel`` or ``LlamaForCausalLM``.

Returns plain dicts (a ``config.json`` mapping and a state dict), so aigc itself does not need
``transformers``; ``to_transformers`` builds the live model when it is installed (tests, benchmarks).
"""

from __future__ import annotations

from typing import Any

import torch

from aigc.config import ModelConfig
from aigc.errors import ConfigError
from aigc.models.gpt import GPT


def architecture(config: ModelConfig) -> str:
    """``gpt2`` or ``llama``: which Hugging Face class reproduces this config exactly."""
    if config.norm == "layernorm" and config.mlp != "swiglu" and config.position == "learned" and config.bias:
        if config.kv_heads != config.n_head:
            raise ConfigError("GPT-2 has no grouped-query attention; set model.n_kv_head = model.n_head to export")
        return "gpt2"
    if config.norm == "rmsnorm" and config.mlp == "swiglu" and config.position == "rope":
        return "llama"
    raise ConfigError(
        "only GPT-2 style (layernorm, gelu or gelu_tanh, learned positions, bias) or Llama style (rmsnorm, swiglu, rope) "
        "models export to Hugging Face"
    )


def hf_config(config: ModelConfig) -> dict[str, Any]:
    """A Hugging Face ``config.json`` mapping for ``config``."""
    common = {"vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings}
    if architecture(config) == "gpt2":
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
    return common | {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": config.n_embd,
        "intermediate_size": config.hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,
        "attention_bias": config.bias,
        "mlp_bias": config.bias,
        "hidden_act": "silu",
        "attention_dropout": config.dropout,
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face names (GPT-2's Conv1D stores (in, out), hence the transposes)."""
    config = model.config
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    q_size = config.n_head * config.head_dim
    kv_size = config.kv_heads * config.head_dim
    if architecture(config) == "gpt2":
        out["transformer.wte.weight"] = ours["wte.weight"]
        out["transformer.wpe.weight"] = ours["wpe.weight"]
        for i in range(config.n_layer):
            src, dst = f"blocks.{i}.", f"transformer.h.{i}."
            pairs = {"norm1": "ln_1", "norm2": "ln_2"}
            for a, b in pairs.items():
                out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = ours[f"{src}{a}.weight"], ours[f"{src}{a}.bias"]
            for a, b in {"attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}.items():
                out[f"{dst}{b}.weight"] = ours[f"{src}{a}.weight"].t().contiguous()
                out[f"{dst}{b}.bias"] = ours[f"{src}{a}.bias"]
        out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = ours["norm.weight"], ours["norm.bias"]
    else:
        out["model.embed_tokens.weight"] = ours["wte.weight"]
        for i in range(config.n_layer):
            src, dst = f"blocks.{i}.", f"model.layers.{i}."
            out[f"{dst}input_layernorm.weight"] = ours[f"{src}norm1.weight"]
            out[f"{dst}post_attention_layernorm.weight"] = ours[f"{src}norm2.weight"]
            for suffix in ("weight", "bias") if config.bias else ("weight",):
                q, k, v = ours[f"{src}attn.qkv.{suffix}"].split([q_size, kv_size, kv_size])
                out[f"{dst}self_attn.q_proj.{suffix}"] = q
                out[f"{dst}self_attn.k_proj.{suffix}"] = k
                out[f"{dst}self_attn.v_proj.{suffix}"] = v
                out[f"{dst}self_attn.o_proj.{suffix}"] = ours[f"{src}attn.proj.{suffix}"]
                gate, up = ours[f"{src}mlp.fc.{suffix}"].chunk(2)
                out[f"{dst}mlp.gate_proj.{suffix}"], out[f"{dst}mlp.up_proj.{suffix}"] = gate, up
                out[f"{dst}mlp.down_proj.{suffix}"] = ours[f"{src}mlp.proj.{suffix}"]
        out["model.norm.weight"] = ours["norm.weight"]
    out["lm_head.weight"] = ours["lm_head.weight"]
    return out


def to_transformers(model: GPT) -> torch.nn.Module:
    """A live ``transformers`` model with our weights (needs the ``transformers`` package)."""
    import transformers

    mapping = hf_config(model.config)
    config_class = transformers.GPT2Config if mapping["model_type"] == "gpt2" else transformers.LlamaConfig
    model_class = transformers.GPT2LMHeadModel if mapping["model_type"] == "gpt2" else transformers.LlamaForCausalLM
    fields = {k: v for k, v in mapping.items() if k not in ("model_type", "architectures")}
    hf_model = model_class(config_class(**fields))
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    real_missing = [k for k in missing if not k.endswith("attn.bias") and k != "lm_head.weight"]
    if real_missing or unexpected:
        raise RuntimeError(f"weight names disagree with transformers: missing {real_missing}, unexpected {unexpected}")
    return hf_model.eval()
