"""torchrun process groups and rank helpers. One process without torchrun is world size 1, rank 0.

Under ``torchrun`` the environment carries RANK, LOCAL_RANK and WORLD_SIZE; we join the group with
NCCL on CUDA and gloo on CPU, and each process drives the device of its local rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int
    local_rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, *values: float) -> list[float]:
        """Sum floats over every process (identity with one process)."""
        if self.world == 1:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: object) -> list[object] | None:
        """``value`` from every process in rank order, on the main process (None on the others).

        Every process must call it at the same point; objects travel pickled (e.g. CPU tensors, dicts).
        """
        if self.world == 1:
            return [value]
        gathered = [None] * self.world if self.is_main else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def all_max(self, value: int) -> int:
        """The largest ``value`` of any process (itself with one process)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def agree(self, elapsed: float, stop: bool) -> tuple[float, bool]:
        """The run's clock and stop request as every process must see them, in one collective: rank 0's
        ``elapsed`` seconds (so a time budget ends every process at the same step, and the learning rate's time
        fraction is the same everywhere) and whether any process was asked to stop (Ctrl-C, SIGTERM)."""
        clock, stops = self.all_sum(elapsed if self.is_main else 0.0, float(stop))
        return clock, stops > 0

    def barrier(self) -> None:
        """Wait until every process reaches this point (nothing with one process)."""
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when available (one GPU per local rank), else CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(name)


def setup(device: str) -> Distributed:
    """Join the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(rank, local_rank, world, chosen)
