"""Packed conversations: no attention across a boundary, the loss where the mask says, batches from (seed, step)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigc.config import ModelConfig
from aigc.data.packing import PackedSampler
from aigc.models import build_model

LENGTHS = [5, 9, 3, 12, 7, 4, 10, 6]


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    total = sum(LENGTHS)
    return rng.integers(1, 50, total).astype(np.uint16), rng.integers(0, 2, total).astype(np.uint8), np.array(LENGTHS)


def _conversations(tokens: np.ndarray) -> list[np.ndarray]:
    ends = np.cumsum(LENGTHS)
    return [tokens[e - n : e].astype(np.int64) for e, n in zip(ends, LENGTHS)]


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_a_packed_row_computes_what_each_conversation_computes_alone(position):
    tokens, mask, lengths = _data()
    sampler = PackedSampler(tokens, mask, lengths, seq_len=16, batch_size=4, grad_accum=1, seed=3)
    config = ModelConfig(vocab_size=50, n_layer=2, n_embd=32, n_head=4, block_size=16, position=position,
                         norm="rmsnorm" if position == "rope" else "layernorm")
    torch.manual_seed(0)
    model = build_model(config).eval()
    conversations = _conversations(tokens)
    (inputs, _), = sampler.step_batches(0)
    ids, _, _, positions, attend = inputs
    assert attend.shape == (4, 1, 16, 16) and attend.dtype == torch.bool
    seen = 0
    with torch.no_grad():
        packed = model(*inputs)
        for b, row in enumerate(sampler._rows(0, 4)):  # the conversations step 0 packed into each row
            at = 0
            for index in row:
                n = LENGTHS[index]
                assert torch.equal(ids[b, at : at + n], torch.from_numpy(conversations[index]))
                assert positions[b, at : at + n].tolist() == list(range(n))
                alone = model(torch.from_numpy(conversations[index])[None])
                assert (packed[b, at : at + n] - alone[0]).abs().max() < 1e-5
                assert not attend[b, 0, at : at + n, :at].any()  # no query sees a key outside its conversation
                assert not attend[b, 0, at : at + n, at + n :].any()
                at += n
                seen += 1
    assert seen > 4  # rows hold several conversations


def test_targets_are_the_next_token_where_it_is_learnt_within_the_conversation():
    tokens, mask, lengths = _data(1)
    sampler = PackedSampler(tokens, mask, lengths, seq_len=32, batch_size=len(LENGTHS), grad_accum=1, seed=0)
    rows = sampler._pack(np.arange(len(LENGTHS)))
    (inputs, targets) = sampler.batch(rows)
    starts = np.concatenate([[0], np.cumsum(LENGTHS)[:-1]])
    for b, row in enumerate(rows):
        at = 0
        for index in row:
            start, n = starts[index], LENGTHS[index]
            expected = [int(tokens[start + t + 1]) if mask[start + t + 1] else -1 for t in range(n - 1)] + [-1]
            assert targets[b, at : at + n].tolist() == expected
            at += n
        assert (targets[b, at:] == -1).all()  # padding is never a target


def test_batches_depend_on_seed_and_step_only_and_each_epoch_covers_every_conversation():
    tokens, mask, lengths = _data()
    make = lambda seed: PackedSampler(tokens, mask, lengths, 16, batch_size=2, grad_accum=2, seed=seed)  # noqa: E731
    first, again = make(5), make(5)
    for step in (7, 0, 3):
        a, b = first.step_batches(step), again.step_batches(step)
        assert all(torch.equal(x[1], y[1]) and torch.equal(x[0][0], y[0][0]) for x, y in zip(a, b))
    assert not torch.equal(first.step_batches(0)[0][0][0], make(6).step_batches(0)[0][0][0])
    epoch = first._rows(0, len(first._pack(np.random.default_rng([5, 0]).permutation(len(LENGTHS)))))
    assert sorted(i for row in epoch for i in row) == list(range(len(LENGTHS)))
    ranks = [PackedSampler(tokens, mask, lengths, 16, 2, 2, 5, rank, 2).step_batches(4) for rank in (0, 1)]
    together = make(5).step_batches(4)
    assert torch.equal(ranks[0][0][1], together[0][1]) and torch.equal(ranks[1][0][1], together[1][1])


def test_conversations_longer_than_the_rows_are_left_out_and_none_fitting_is_an_error():
    tokens, mask, lengths = _data()
    sampler = PackedSampler(tokens, mask, lengths, 8, 2, 1, 0)
    assert sorted(sampler.lengths.tolist()) == sorted(n for n in LENGTHS if n <= 8)
    with pytest.raises(Exception, match="no train conversation fits in train.seq_len=2"):
        PackedSampler(tokens, mask, lengths, 2, 2, 1, 0)
