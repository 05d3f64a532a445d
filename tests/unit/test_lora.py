"""LoRA adapters: what trains, merging, PEFT names, and the errors for targets and ranks that cannot be."""

from __future__ import annotations

import pytest
import torch

from aigc.config import ConfigError, LoraConfig, ModelConfig, TrainConfig, load_config
from aigc.errors import TrainingError
from aigc.models import build_model
from aigc.models.lora import adapted_layers, apply_lora, available_targets, load_peft_state, merge_lora, peft_state
from aigc.training.optim import build_optimizer

LLAMA = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, block_size=32, norm="rmsnorm",
                    mlp="swiglu", position="rope", bias=False)
GPT2 = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=32, mlp="gelu_tanh")


def _model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config)


def _randomise_adapters(model: torch.nn.Module) -> None:
    """B starts at zero (the update is 0); give it values so the tests see the adapters at work."""
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            for b in layer.lora_B:
                b.normal_(0, 0.5)


def test_targets_are_hugging_face_module_names():
    assert available_targets(LLAMA) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert available_targets(GPT2) == ["c_attn", "c_proj", "c_fc"]


@pytest.mark.parametrize("config", [LLAMA, GPT2], ids=["llama", "gpt2"])
def test_a_fresh_adapter_changes_nothing_and_only_adapters_train(config):
    model = _model(config).eval()
    x = torch.randint(0, 64, (2, 12))
    before = model(x)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    assert torch.equal(model(x), before)  # B = 0: training starts from the base exactly
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1, lr=1e-2), torch.device("cpu"))
    trained = [p for group in optimizer.param_groups for p in group["params"]]
    assert trained and all(p.requires_grad for p in trained)
    assert {id(p) for p in trained} == {id(p) for _, l in adapted_layers(model) for p in [*l.lora_A, *l.lora_B]}
    model.train()
    for _ in range(5):
        loss = model(x, targets=torch.roll(x, -1, dims=1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = {name.replace(".base.", "."): t for name, t in model.state_dict().items() if "lora_" not in name}
    for name, tensor in base.items():  # weight decay and all: the base is bit-identical
        assert torch.equal(after[name], tensor), name
    assert not torch.equal(model.eval()(x), before)
    assert len(optimizer.state) == len(trained)  # optimizer moments for the adapters only


@pytest.mark.parametrize(("config", "targets"), [(LLAMA, []), (LLAMA, ["v_proj", "down_proj"]), (GPT2, []),
                                                 (GPT2, ["c_fc"])], ids=["llama-all", "llama-some", "gpt2-all", "gpt2-fc"])
def test_merged_equals_unmerged(config, targets):
    model = _model(config).eval()
    apply_lora(model, LoraConfig(rank=4, alpha=16, targets=targets))
    _randomise_adapters(model)
    x = torch.randint(0, 64, (3, 16))
    unmerged = model(x)
    merge_lora(model)
    assert not adapted_layers(model)
    assert (model(x) - unmerged).abs().max().item() <= 1e-5


def test_peft_state_round_trips_and_refuses_a_foreign_file():
    model = _model(LLAMA)
    apply_lora(model, LoraConfig(rank=4, targets=["q_proj", "v_proj"]))
    _randomise_adapters(model)
    state = peft_state(model)
    assert "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" in state
    assert state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
    assert state["base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"].shape == (16, 4)  # 2 kv heads x 8
    other = _model(LLAMA)
    apply_lora(other, LoraConfig(rank=4, targets=["q_proj", "v_proj"]))
    load_peft_state(other, state)
    x = torch.randint(0, 64, (1, 8))
    assert torch.equal(other.eval()(x), model.eval()(x))
    wider = _model(LLAMA)
    apply_lora(wider, LoraConfig(rank=8, targets=["q_proj", "v_proj"]))
    with pytest.raises(TrainingError, match="does not fit this model"):
        load_peft_state(wider, state)
    more = _model(LLAMA)
    apply_lora(more, LoraConfig(rank=4, targets=["q_proj"]))
    with pytest.raises(TrainingError, match="does not adapt"):
        load_peft_state(more, state)


def test_targets_and_ranks_that_cannot_be_are_clear_errors():
    with pytest.raises(ConfigError, match="name no module of this model; it has q_proj, k_proj"):
        apply_lora(_model(LLAMA), LoraConfig(rank=4, targets=["query"]))
    with pytest.raises(ConfigError, match="train.lora.rank=40 is larger than"):
        apply_lora(_model(LLAMA), LoraConfig(rank=40))
    with pytest.raises(ConfigError, match="at least 1"):
        load_config("text", ["train.lora.rank=0", "model.init=runs/x"])
    with pytest.raises(ConfigError, match="set model.init"):
        load_config("text", ["train.lora.rank=4"])
    no_family = ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=4, position="rope")
    with pytest.raises(ConfigError, match="no Hugging Face family"):
        apply_lora(_model(no_family), LoraConfig(rank=2))
