"""Per-process RNG states (aigc.training.rng): each rank gets its own stream back on resume."""

from __future__ import annotations

import torch

from aigc.training import rng
from aigc.training.distributed import Distributed

CPU = torch.device("cpu")


def _rank(rank: int, world: int) -> Distributed:
    return Distributed(rank, rank, world, CPU)


def _state_after_seed(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.get_rng_state()


def _saved(*seeds: int) -> list[rng.State]:
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        torch.rand(3)  # a stream part-way through, as after some dropout
        states.append(rng.capture(CPU))
    return states


def test_each_rank_restores_its_own_state():
    saved = _saved(10, 11)
    for rank in (0, 1):
        torch.manual_seed(999)
        assert rng.restore(saved, _rank(rank, 2), seed=1, step=7)
        assert torch.equal(torch.get_rng_state(), saved[rank]["torch"])


def test_ranks_without_a_saved_state_seed_seed_plus_rank_plus_step():
    saved = _saved(10, 11)
    assert not rng.restore(saved, _rank(2, 3), seed=1, step=7)  # resumed on more processes
    assert torch.equal(torch.get_rng_state(), _state_after_seed(1 + 2 + 7))
    assert rng.restore(saved, _rank(0, 1), seed=1, step=7)  # on fewer: rank 0 keeps its stream
    assert torch.equal(torch.get_rng_state(), saved[0]["torch"])


def test_checkpoints_with_one_state_give_it_to_rank_0_only():
    (old,) = _saved(10)  # before per-rank states, `rng` was rank 0's state alone
    assert rng.restore(old, _rank(0, 2), seed=1, step=7)
    assert torch.equal(torch.get_rng_state(), old["torch"])
    assert not rng.restore(old, _rank(1, 2), seed=1, step=7)
    assert torch.equal(torch.get_rng_state(), _state_after_seed(1 + 1 + 7))


def test_one_process_gathers_its_own_state():
    torch.manual_seed(3)
    (state,) = rng.gather(_rank(0, 1))
    assert torch.equal(state["torch"], torch.get_rng_state()) and set(state) == {"torch"}
