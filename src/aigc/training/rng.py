"""RNG states per process: each rank saves and restores its own random stream.

Batches come from generators seeded by (seed, step), so the global torch RNG drives only what the model
draws while training: dropout masks. A fresh run seeds each process with ``seed + rank``, so processes
draw different masks. A checkpoint keeps every rank's state (``train_state["rng"]`` is a list in rank
order, gathered to rank 0, the one that writes), and on resume each rank continues its own stream, so a
resumed run with dropout reproduces the uninterrupted one.

Resuming on more processes than saved states (or from a checkpoint written before per-rank states, which
holds rank 0's alone): a rank without a saved state seeds ``seed + rank + step``, a stream of its own
that differs from the other ranks' and from its fresh-start one. Resuming on fewer processes, ranks
beyond the new world's are dropped.
"""

from __future__ import annotations

import torch

from aigc.training.distributed import Distributed

State = dict[str, torch.Tensor]


def capture(device: torch.device) -> State:
    """This process's RNG state: the CPU generator, and the device's when it is a GPU."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def apply(state: State, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def gather(env: Distributed) -> list[State] | None:
    """Every rank's state in rank order on the main process, None on the others; every rank must call it."""
    return env.gather(capture(env.device))


def restore(saved: list[State] | State, env: Distributed, seed: int, step: int) -> bool:
    """Restore this rank's saved state, or seed ``seed + rank + step`` when none was saved for it.

    ``saved`` is a checkpoint's ``rng``: a list per rank, or one state (rank 0's) in older checkpoints.
    Returns whether this rank found its own state.
    """
    states = [saved] if isinstance(saved, dict) else saved
    if env.rank < len(states):
        apply(states[env.rank], env.device)
        return True
    torch.manual_seed(seed + env.rank + step)
    return False
