"""How the processes of a run hold the model: whole copies (one process, or DDP), or shards (FSDP2).

``train.parallel=ddp`` keeps the whole model, its gradients and AdamW's moments on every process and
all-reduces the gradients; ``fsdp`` (``torch.distributed.fsdp.fully_shard``) gives each process 1/N of
every weight, gradient and moment, all-gathers a block's weights just before it runs and reduce-scatters
its gradients after. Each child module list of the model (a GPT's blocks, an encoder-decoder's encoder and
decoder) is sharded block by block; the root group holds the rest (embeddings, final norm, output layer).

Checkpoints of a sharded run keep the training state (weights and optimizer moments) in
``torch.distributed.checkpoint`` format under ``shards/``, each process writing its own part, and load it
on any number of processes (resharded on load, or into a whole model on one process). The consolidated
weights are also written as the checkpoint's ordinary safetensors file, so ``generate``, ``eval``,
``serve`` and ``export`` never see shards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel

from aigc.config import TrainConfig
from aigc.errors import TrainingError
from aigc.training.distributed import Distributed


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks: the members of its child module lists (a GPT's blocks, an encoder-decoder's
    encoder and decoder layers), each the unit that is sharded and whose activations are recomputed."""
    return [block for child in model.children() if isinstance(child, nn.ModuleList) for block in child]


@contextlib.contextmanager
def _one_process_quietly() -> Iterator[None]:
    """torch.distributed.checkpoint warns on every save and load of one process without a process group, which is
    what a sharded run resumed without torchrun is: expected here, so not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


# A sharded checkpoint keeps what trains: a LoRA run's frozen base is model.init's, not the checkpoint's.
_TRAINED = StateDictOptions(ignore_frozen_params=True, strict=False)


class Parallel:
    """One process, or DDP: every process holds the whole model."""

    sharded = False

    def __init__(self, model: nn.Module, env: Distributed, config: TrainConfig):
        self.model, self.env, self.ddp = model, env, None
        if config.activation_checkpointing:
            for block in blocks(model):
                checkpoint_activations(block)
        self.forward: nn.Module = self._distribute(config)

    def _distribute(self, config: TrainConfig) -> nn.Module:
        """Spread the model over the processes; return the module a training step calls."""
        self.ddp = DistributedDataParallel(self.model) if self.env.world > 1 else None
        return self.ddp or self.model

    def micro_batch(self, sync: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: gradients are reduced between processes only when ``sync``
        (the step's last micro-batch), so accumulation costs one reduction per step."""
        return self.ddp.no_sync() if self.ddp is not None and not sync else contextlib.nullcontext()

    def forward_rounds(self, batches: int) -> int:
        """How many forward passes this process makes to evaluate its ``batches`` micro-batches: its own count,
        as processes that hold whole models need nothing from each other to run one."""
        return batches

    def clip(self, max_norm: float) -> float:
        """Clip the global gradient norm to ``max_norm`` (inf: measure only); return the norm before clipping."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # a DTensor when sharded

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every weight under its ordinary name, whole (for the checkpoint's safetensors file). Every process calls
        it; a sharded model's whole tensors arrive on the main process only."""
        return self.model.state_dict()

    def load_shards(self, optimizer: torch.optim.Optimizer, folder: Path) -> None:
        """Load the trained weights and optimizer state of a sharded checkpoint, whatever number of processes wrote
        it: resharded for this run's processes, or whole for a model that is not sharded."""
        model_state, optimizer_state = get_state_dict(self.model, optimizer, options=_TRAINED)
        state = {"model": model_state, "optimizer": optimizer_state}
        with _one_process_quietly():
            dcp.load(state, checkpoint_id=folder, no_dist=self.env.world == 1)
        set_state_dict(self.model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=_TRAINED)


class Sharded(Parallel):
    """FSDP2: every process holds 1/N of each weight, gradient and optimizer moment.

    On a GPU with ``train.precision=bf16`` the blocks compute in bfloat16 from float32 master weights and
    reduce gradients in float32 (a mixed-precision policy; autocast still keeps norms and softmax in float32);
    ``train.cpu_offload`` keeps the shards in CPU memory between uses. With one process (a sharded run resumed
    without torchrun) nothing is sharded, and its checkpoints keep the sharded format.
    """

    sharded = True

    def _distribute(self, config: TrainConfig) -> nn.Module:
        if config.cpu_offload and self.env.device.type != "cuda":
            raise TrainingError(f"train.cpu_offload keeps a GPU run's shards in CPU memory; this run is on "
                                f"{self.env.device}, where they are already: leave train.cpu_offload off")
        if self.env.world > 1:
            bf16 = config.precision == "bf16" and self.env.device.type == "cuda"
            options = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                       if bf16 else MixedPrecisionPolicy()}
            if config.cpu_offload:
                options["offload_policy"] = CPUOffloadPolicy()
            for block in blocks(self.model):
                fully_shard(block, **options)
                for method in getattr(block, "extra_forward_methods", ()):  # gathered like forward when called
                    register_fsdp_forward_method(block, method)
            fully_shard(self.model, **options)
        return self.model

    def micro_batch(self, sync: bool) -> contextlib.AbstractContextManager:
        if self.env.world > 1:
            self.model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def forward_rounds(self, batches: int) -> int:
        """The most micro-batches any process has: each forward pass gathers weights from every process, so a
        process whose share of an evaluation is smaller runs extra passes (not counted) to keep them in step."""
        return self.env.all_max(batches)

    def full_state(self) -> dict[str, torch.Tensor]:
        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_shards(self, optimizer: torch.optim.Optimizer, folder: Path) -> list[str]:
        """Write this process's part of the trained weights and optimizer state into ``folder`` (every process calls
        it at once); return the files written, relative to ``folder``'s parent, on the main process."""
        model_state, optimizer_state = get_state_dict(self.model, optimizer, options=_TRAINED)
        with _one_process_quietly():
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder,
                     no_dist=self.env.world == 1)
        return [f"{folder.name}/{path.name}" for path in sorted(folder.iterdir())] if self.env.is_main else []


def for_training(model: nn.Module, env: Distributed, config: TrainConfig) -> Parallel:
    """The run's way of holding ``model`` (on its device already) across its processes (``train.parallel``)."""
    return (Sharded if config.parallel == "fsdp" else Parallel)(model, env, config)
