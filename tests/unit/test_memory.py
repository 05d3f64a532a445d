"""The per-process memory estimate printed before a run on several processes, and the refusal of a run that cannot fit."""

from __future__ import annotations

import pytest

from aigc.config import load_config
from aigc.errors import TrainingError
from aigc.training.memory import GiB, check_fits, estimate

GPT2_SMALL = ["model.n_layer=12", "model.n_head=12", "model.n_embd=768", "model.block_size=1024",
              "model.vocab_size=50304", "train.batch_size=4"]


def _estimate(*settings: str, world: int = 2):
    return estimate(load_config("text", [*GPT2_SMALL, *settings]), None, world)


def test_weights_gradients_and_moments_are_counted_exactly_and_sharded_by_fsdp():
    ddp, fsdp = _estimate("train.parallel=ddp"), _estimate("train.parallel=fsdp")
    params = 12 * (12 * 768 * 768 + 13 * 768) + 50304 * 768 + 1024 * 768 + 2 * 768  # tied output projection
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (4 * params, 4 * params, 8 * params)
    block = (12 * 768 * 768 + 13 * 768) * 4
    assert fsdp.weights == 4 * params // 2 + 2 * block  # a shard, plus the running and the prefetched block whole
    assert (fsdp.gradients, fsdp.optimizer) == (ddp.gradients // 2, ddp.optimizer // 2)
    assert fsdp.activations == ddp.activations  # each process runs its own micro-batch either way
    assert "fsdp over 2 process(es)" in fsdp.describe() and f"= {fsdp.total / GiB:.2f} GiB" in fsdp.describe()


def test_activation_checkpointing_and_a_frozen_head_shrink_the_activations():
    plain = _estimate()
    checkpointed = _estimate("train.activation_checkpointing=true")
    logits = 2 * 4 * 1024 * 50304 * 4
    assert checkpointed.activations < (plain.activations - logits) / 6 + logits
    lora = _estimate("train.lora.rank=8", "model.init=/nowhere")  # adapters on a frozen base: chunked loss
    assert lora.activations == plain.activations - logits
    assert lora.optimizer < plain.optimizer / 100 and lora.weights > plain.weights  # the base is stored, adapters added


def test_a_run_that_cannot_fit_is_refused_with_what_to_change():
    needed = _estimate("train.parallel=ddp")
    check_fits(needed, needed.total)  # exactly enough
    with pytest.raises(TrainingError) as refused:
        check_fits(needed, needed.total - 1)
    message = str(refused.value)
    assert "does not fit" in message and "weights 0.46" in message
    for remedy in ("train.batch_size", "train.parallel=fsdp", "train.activation_checkpointing", "train.lora.rank"):
        assert remedy in message
    assert "train.parallel=fsdp" not in str(pytest.raises(TrainingError, check_fits, _estimate("train.parallel=fsdp"),
                                                          0).value)
