"""Logit parity with Hugging Face on tiny random configs: our GPT exported to GPT2LMHeadModel / LlamaForCausalLM."""

import pytest
import torch

from aigc.config import ModelConfig
from aigc.models import GPT
from aigc.models.hf import to_transformers

GPT2 = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=50, mlp="gelu_tanh")
LLAMA = dict(GPT2, norm="rmsnorm", mlp="swiglu", position="rope", bias=False, n_kv_head=2)


@pytest.mark.parametrize(
    "options",
    [GPT2, dict(GPT2, mlp="gelu"), LLAMA, dict(LLAMA, tie_embeddings=False, n_kv_head=4)],
    ids=["gpt2", "gpt2-exact-gelu", "llama-gqa", "llama-untied"],
)
def test_logits_match_transformers(options):
    torch.manual_seed(0)
    ours = GPT(ModelConfig(**options)).eval()
    with torch.no_grad():  # perturb norms so the test also covers their weights
        for name, param in ours.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    theirs = to_transformers(ours)
    idx = torch.randint(0, options["vocab_size"], (3, 16))
    with torch.no_grad():
        expected = theirs(idx).logits
        got = ours(idx)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
