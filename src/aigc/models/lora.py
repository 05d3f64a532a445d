"""Low-rank adapters (LoRA, Hu et al. 2021) on the GPT's linear layers, stored as PEFT stores them.

An adapted linear computes ``W x + (alpha / r) * B A x`` with the base ``W`` frozen, ``A`` (r, in)
and ``B`` (out, r) trained, ``B`` starting at zero so training starts from the base model exactly.

Our query/key/value projection and the SwiGLU gate/up projection are fused linears, while Hugging Face
(and so PEFT) has one module each (``q_proj``, ``k_proj``, ...). An adapted fused linear therefore
holds one adapter pair per Hugging Face module it covers: a *slice* of its output rows. The ``A``
matrices of all slices share the input, so they run as one matmul (in -> n*r) and only the small
``B`` products are per slice. Names come from :func:`aigc.models.hf.weight_map`, so targets are
the module names PEFT users know, and :func:`peft_state` writes ``adapter_model.safetensors`` keys
that ``peft.PeftModel.from_pretrained`` loads onto the exported base. One dropout mask is shared by
the slices of a fused layer (PEFT draws one per module: the same distribution, other draws).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from aigc.config import LoraConfig, ModelConfig
from aigc.errors import ConfigError, TrainingError
from aigc.models import hf

PEFT_PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Slice:
    """Output rows ``start:end`` of one of our linear layers are the Hugging Face module ``module`` (its leaf
    name, e.g. ``q_proj``, is what ``train.lora.targets`` names)."""

    module: str
    start: int
    end: int | None  # None: to the layer's last row

    @property
    def target(self) -> str:
        return self.module.rsplit(".", 1)[-1]


def linear_slices(config: ModelConfig) -> dict[str, list[Slice]]:
    """Each Transformer-block linear layer of a GPT with ``config`` (our module path) -> its Hugging Face modules."""
    found: dict[str, list[Slice]] = {}
    for weight in hf.weight_map(config):
        if not (weight.ours.startswith("blocks.") and weight.ours.endswith(".weight")) or "norm" in weight.ours:
            continue
        if weight.sizes:
            bounds = [0, *itertools.accumulate(weight.sizes)]
            slices = [Slice(n.removesuffix(".weight"), bounds[i], bounds[i + 1]) for i, n in enumerate(weight.theirs)]
        else:
            slices = [Slice(weight.theirs[0].removesuffix(".weight"), 0, None)]
        found[weight.ours.removesuffix(".weight")] = slices
    return found


def available_targets(config: ModelConfig) -> list[str]:
    """The module names ``train.lora.targets`` may use for this model, in layer order."""
    return list(dict.fromkeys(s.target for slices in linear_slices(config).values() for s in slices))


class LoRALinear(nn.Module):
    """A frozen linear layer plus one trained low-rank update per adapted slice of its output rows."""

    def __init__(self, base: nn.Linear, slices: list[Slice], rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base, self.rank, self.scale = base, rank, alpha / rank
        self.active = True
        out = base.out_features
        self.slices = [Slice(s.module, s.start, s.end or out) for s in slices]
        for s in self.slices:
            if rank > min(base.in_features, s.end - s.start):
                raise ConfigError(f"train.lora.rank={rank} is larger than {s.target} ({base.in_features} -> "
                                  f"{s.end - s.start}); use a rank of at most {min(base.in_features, s.end - s.start)}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.ParameterList(nn.Parameter(torch.empty(rank, base.in_features)) for _ in self.slices)
        self.lora_B = nn.ParameterList(nn.Parameter(torch.zeros(s.end - s.start, rank)) for s in self.slices)
        for a in self.lora_A:  # PEFT's (and nn.Linear's) default initialisation of A
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(.., in) -> (.., out): the base output plus every slice's update, added inside one matmul."""
        y = self.base(x)
        if not self.active:  # adapters off: the base model (DPO's reference)
            return y
        a = F.linear(self.dropout(x), torch.cat(list(self.lora_A)).to(x.dtype))  # (.., n*r): every slice's A at once
        stacked = self.stacked_b().to(x.dtype)  # (out, n*r)
        return torch.addmm(y.reshape(-1, y.shape[-1]), a.reshape(-1, a.shape[-1]), stacked.t()).view_as(y)

    def stacked_b(self) -> torch.Tensor:
        """All B matrices as one (out, n*r) matrix, scaled: slice i's B in its rows and in columns i*r..(i+1)*r,
        zeros elsewhere (rows no adapter covers too), so the B A x of every slice is one matmul added into W x."""
        n, r, rows, at = len(self.slices), self.rank, [], 0
        for i, (s, b) in enumerate(zip(self.slices, self.lora_B)):
            if s.start > at:
                rows.append(b.new_zeros(s.start - at, n * r))
            rows.append(F.pad(b * self.scale, (i * r, (n - 1 - i) * r)))
            at = s.end
        if at < self.base.out_features:
            rows.append(self.lora_B[0].new_zeros(self.base.out_features - at, n * r))
        return torch.cat(rows)

    def delta_weight(self) -> torch.Tensor:
        """The update to the base weight, (out, in) in float32: scale * B A in each adapted slice, zero elsewhere."""
        delta = torch.zeros(self.base.weight.shape, dtype=torch.float32, device=self.base.weight.device)
        for s, a, b in zip(self.slices, self.lora_A, self.lora_B):
            delta[s.start : s.end] = self.scale * (b.float() @ a.float())
        return delta


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    head, _, leaf = path.rpartition(".")
    return model.get_submodule(head), leaf


def check_targets(settings: LoraConfig, config: ModelConfig) -> list[str]:
    """The modules ``settings`` adapts in a model with ``config``; a clear :class:`ConfigError` when one is unknown."""
    try:
        known = available_targets(config)
    except ConfigError as err:
        raise ConfigError(f"LoRA names its targets as Hugging Face does, and this model has no Hugging Face "
                          f"family: {err}") from None
    targets = settings.targets or known
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ConfigError(f"train.lora.targets {unknown} name no module of this model; it has {', '.join(known)}")
    return targets


def apply_lora(model: nn.Module, settings: LoraConfig) -> list[str]:
    """Freeze ``model`` and wrap the targeted linear layers in :class:`LoRALinear` (in place); return the targets.

    A clear :class:`ConfigError` for a target that names no module of this model, or a rank the layer cannot hold.
    """
    targets = check_targets(settings, model.config)
    table = linear_slices(model.config)
    for param in model.parameters():
        param.requires_grad_(False)
    for path, slices in table.items():
        chosen = [s for s in slices if s.target in targets]
        if chosen:
            parent, leaf = _parent(model, path)
            base = getattr(parent, leaf)
            adapted = LoRALinear(base, chosen, settings.rank, settings.alpha, settings.dropout)
            setattr(parent, leaf, adapted.to(base.weight.device))
    return targets


def adapted_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Inside the block ``model`` computes as its base: every adapter switched off (no copy of any weight)."""
    layers = [layer for _, layer in adapted_layers(model)]
    for layer in layers:
        layer.active = False
    try:
        yield
    finally:
        for layer in layers:
            layer.active = True


def peft_state(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The adapters under PEFT's ``adapter_model.safetensors`` names (float32, contiguous, on the CPU).

    ``weights``: the model's state dict to read them from (a sharded model's, gathered whole); default its own.
    """
    weights = model.state_dict() if weights is None else weights
    state = {}
    for path, layer in adapted_layers(model):
        for i, s in enumerate(layer.slices):
            for matrix in ("lora_A", "lora_B"):
                tensor = weights[f"{path}.{matrix}.{i}"]
                state[f"{PEFT_PREFIX}{s.module}.{matrix}.weight"] = tensor.detach().float().contiguous().cpu()
    return state


def load_peft_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy adapters saved by :func:`peft_state` into ``model`` (already wrapped by :func:`apply_lora`).

    Every adapter of the model must be in ``state`` and every tensor of ``state`` must be used, with its shape.
    """
    expected = set()
    for _, layer in adapted_layers(model):
        for s, a, b in zip(layer.slices, layer.lora_A, layer.lora_B):
            for key, param in ((f"{PEFT_PREFIX}{s.module}.lora_A.weight", a), (f"{PEFT_PREFIX}{s.module}.lora_B.weight", b)):
                expected.add(key)
                if key not in state or state[key].shape != param.shape:
                    found = tuple(state[key].shape) if key in state else "missing"
                    raise TrainingError(f"the adapter file does not fit this model: {key} is {found}, expected "
                                        f"{tuple(param.shape)} (same model.init, train.lora.rank and targets?)")
                with torch.no_grad():
                    param.copy_(state[key])
    extra = sorted(set(state) - expected)
    if extra:
        raise TrainingError(f"the adapter file has tensors this model does not adapt: {', '.join(extra[:4])}")


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight and unwrap it (in place): the plain model, with the same outputs."""
    with torch.no_grad():
        for path, layer in adapted_layers(model):
            weight = layer.base.weight
            weight.copy_((weight.float() + layer.delta_weight()).to(weight.dtype))
            parent, leaf = _parent(model, path)
            setattr(parent, leaf, layer.base)


def peft_config(settings: LoraConfig, targets: list[str], config: ModelConfig, base: str) -> dict:
    """``adapter_config.json`` as PEFT writes it for these adapters (``base``: where the base model came from)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": settings.rank,
        "lora_alpha": settings.alpha, "lora_dropout": settings.dropout, "target_modules": sorted(targets),
        "fan_in_fan_out": hf.family(config) == "gpt2", "bias": "none", "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
        "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {},
        "revision": None,
    }
