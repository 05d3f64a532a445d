import pytest
import torch

from aigc.config import ModelConfig
from aigc.models import GPT
from aigc.models.layers import causal_mask

GPT2_STYLE = dict(n_layer=2, n_head=4, n_embd=32, block_size=32, vocab_size=64)
LLAMA_STYLE = dict(GPT2_STYLE, norm="rmsnorm", mlp="swiglu", position="rope", bias=False, n_kv_head=2)
STYLES = pytest.mark.parametrize("options", [GPT2_STYLE, LLAMA_STYLE], ids=["gpt2", "llama"])


@STYLES
def test_shapes_and_loss(options):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**options))
    idx = torch.randint(0, 64, (3, 10))
    assert model(idx).shape == (3, 10, 64)
    assert model(idx, last_only=True).shape == (3, 1, 64)
    loss = model(idx, targets=torch.randint(0, 64, (3, 10)))
    assert loss.dim() == 0 and abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.5


def test_tied_embeddings_and_param_count():
    model = GPT(ModelConfig(**GPT2_STYLE))
    assert model.lm_head.weight is model.wte.weight
    untied = GPT(ModelConfig(**GPT2_STYLE, tie_embeddings=False))
    assert untied.num_params() - model.num_params() == 64 * 32
    assert model.flops_per_token() == 6 * model.num_params() + 12 * 2 * 32 * 32


@pytest.mark.parametrize("options", [dict(GPT2_STYLE), dict(LLAMA_STYLE, rope_theta=500.0, tie_embeddings=False)],
                         ids=["gpt2-tied", "llama-untied"])
def test_a_model_built_empty_then_loaded_equals_the_original(options):
    """empty_model (what a checkpoint loads into, skipping the random init) keeps the output projection tied to
    the embedding and computes the RoPE tables that are not saved: loaded, it gives the same logits."""
    from aigc.models import empty_model

    torch.manual_seed(0)
    config = ModelConfig(**options)
    original = GPT(config).eval()
    empty = empty_model(config)
    assert (empty.lm_head.weight is empty.wte.weight) == config.tie_embeddings
    empty.load_state_dict(original.state_dict())
    idx = torch.randint(0, 64, (2, 12))
    assert torch.equal(empty.eval()(idx), original(idx))


def test_scaled_residual_init():
    torch.manual_seed(0)
    model = GPT(ModelConfig(**dict(GPT2_STYLE, n_layer=8, n_embd=256, n_head=4)))
    proj_std = model.blocks[0].attn.proj.weight.std().item()
    fc_std = model.blocks[0].mlp.fc.weight.std().item()
    assert fc_std == pytest.approx(0.02, rel=0.05)
    assert proj_std == pytest.approx(0.02 / 4, rel=0.05)
    assert model.blocks[0].mlp.fc.bias.abs().sum() == 0


def test_context_longer_than_block_size_is_refused():
    model = GPT(ModelConfig(**GPT2_STYLE))
    with pytest.raises(ValueError, match="block_size is 32"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_causal_mask_offsets():
    mask = causal_mask(2, 3, torch.device("cpu"))[0, 0]
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


@STYLES
def test_future_tokens_do_not_change_past_logits(options):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**options)).eval()
    idx = torch.randint(0, 64, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 64
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, :8], model(changed)[:, :8], rtol=0, atol=0)


@STYLES
@pytest.mark.parametrize("capacity", [32, 4], ids=["static", "growing"])
def test_kv_cache_matches_full_forward(options, capacity):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**options)).eval()
    idx = torch.randint(0, 64, (2, 20))
    caches = model.new_caches(2, capacity)
    with torch.no_grad():
        full = model(idx)
        pieces = [model(idx[:, :7], caches=caches)]
        pieces += [model(idx[:, t : t + 1], caches=caches) for t in range(7, 17)]
        pieces.append(model(idx[:, 17:], caches=caches))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert caches[0].length == 20


@STYLES
def test_overfits_a_tiny_batch(options):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**options))
    idx = torch.randint(0, 64, (4, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(idx[:, :-1], targets=idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
