"""The chunked loss through a frozen output projection equals the plain one, in value and in gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aigc.training import chunked_loss
from aigc.training.chunked_loss import frozen_head_cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_matches_cross_entropy_of_the_logits(monkeypatch, smoothing):
    monkeypatch.setattr(chunked_loss, "CHUNK_ELEMENTS", 7 * 50)  # chunks of 7 rows, the last one shorter
    torch.manual_seed(0)
    hidden = torch.randn(3, 9, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64)
    targets = torch.randint(0, 50, (3, 9))
    targets[0, :4] = -1  # ignored positions
    plain = F.cross_entropy((hidden @ weight.t()).reshape(-1, 50), targets.reshape(-1), ignore_index=-1,
                            label_smoothing=smoothing)
    (expected,) = torch.autograd.grad(plain, hidden)
    chunked = frozen_head_cross_entropy(hidden, weight, targets, smoothing)
    (got,) = torch.autograd.grad(chunked * 3.0, hidden)
    assert abs(chunked.item() - plain.item()) < 1e-10
    assert torch.allclose(got, 3.0 * expected, atol=1e-10)


def test_a_trainable_projection_is_refused():
    with pytest.raises(ValueError, match="frozen"):
        frozen_head_cross_entropy(torch.randn(1, 2, 4), torch.randn(5, 4, requires_grad=True), torch.zeros(1, 2).long())


def test_without_gradients_it_computes_the_loss_alone():
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(2, 5, 8), torch.randn(30, 8), torch.randint(0, 30, (2, 5))
    with torch.no_grad():
        value = frozen_head_cross_entropy(hidden, weight, targets)
    assert abs(value.item() - F.cross_entropy((hidden @ weight.t()).reshape(-1, 30), targets.reshape(-1)).item()) < 1e-5
