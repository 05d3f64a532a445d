"""What fine-tuning changes in a training run: the starting weights, what trains, and what a checkpoint keeps.

Full fine-tuning loads ``model.init``'s weights (in float32) and trains them all. LoRA
(``train.lora.rank``) loads them as a frozen base, wraps the targeted projections in adapters
(:mod:`aigc.models.lora`), and trains and checkpoints the adapters alone, so the optimizer state and the
checkpoints are a few MB. With ``train.precision=bf16`` the frozen base is stored in bfloat16 (half the
memory; it gets no gradient, so nothing is lost to rounding in updates) while the adapters stay float32.
"""

from __future__ import annotations

import torch
from torch import nn

from aigc.checkpoint import Checkpoint, load_checkpoint
from aigc.config import Config
from aigc.errors import TrainingError
from aigc.files import file_hash
from aigc.models.lora import apply_lora, load_peft_state, peft_state


def check_tokenizer(config: Config, manifest: dict) -> None:
    """The prepared data must be encoded with ``model.init``'s tokenizer (the ids are the model's vocabulary)."""
    if config.model.init is None:
        return
    init_tokenizer = load_checkpoint(config.model.init).path / "tokenizer.json"
    if file_hash(init_tokenizer) != manifest["tokenizer"]["sha256"]:
        raise TrainingError(f"the prepared data was encoded with another tokenizer than model.init's "
                            f"({init_tokenizer}); run `aigc prepare` with model.init set, then train")


def start_from_init(model: nn.Module, config: Config, resuming: bool, log) -> None:
    """Load ``model.init``'s weights into ``model`` and, for LoRA, freeze them and add the adapters (in place).

    A resumed full fine-tune skips the load (the checkpoint overwrites every weight); LoRA always needs the base.
    """
    if config.model.init is None or (resuming and not config.train.lora.enabled):
        return
    init = load_checkpoint(config.model.init)
    if init.is_adapter:  # adapters on another base: start from their merged weights
        state = init.load_model().state_dict()
    else:
        state = init.model_state()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise TrainingError(f"model.init={config.model.init} does not fit the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    del state
    if not config.train.lora.enabled:
        log(f"full fine-tuning from {config.model.init}")
        return
    if config.train.precision == "bf16":
        model.to(torch.bfloat16)
    targets = apply_lora(model, config.train.lora)  # the adapters are made in float32, after the cast
    log(f"LoRA rank {config.train.lora.rank} on {', '.join(targets)} of {config.model.init}, the base frozen")


def trained_state(model: nn.Module, config: Config, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a checkpoint stores of the model's ``weights`` (its whole state dict): every weight, or a LoRA run's
    adapters under PEFT's names."""
    return peft_state(model, weights) if config.train.lora.enabled else weights


def restore_trained_state(model: nn.Module, checkpoint: Checkpoint) -> None:
    """Load what :func:`trained_state` stored back into ``model``."""
    if checkpoint.is_adapter:
        load_peft_state(model, checkpoint.model_state())
    else:
        model.load_state_dict(checkpoint.model_state())
