"""Logits -> next token: penalties, temperature, top-k, top-p, min-p, greedy. Pure functions on tensors.

Order of operations (as in Hugging Face and vLLM): penalties on raw logits, then temperature, then
the top-k / top-p / min-p filters, then a draw from the remaining distribution (or argmax when the
temperature is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pydantic import TypeAdapter, ValidationError

from aigc.config import SAMPLING_BOUNDS, GenerateConfig
from aigc.errors import GenerationError
from aigc.generate.grammar import Grammar

GREEDY_BELOW = 1e-5  # a temperature this small is greedy decoding (dividing by it overflows float32)
_BOUNDS = {name: TypeAdapter(bounds) for name, bounds in SAMPLING_BOUNDS.items()}


@dataclass(frozen=True)
class SamplingParams:
    """Everything that shapes one generation request."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False  # keep going past <|endoftext|> (fixed-length outputs for benchmarks)
    logprobs: bool = False
    truncate_prompt: bool = True
    grammar: Grammar | None = None  # what the output must match (constrained decoding, aigc.generate.grammar)

    def __post_init__(self) -> None:
        for name, bounds in _BOUNDS.items():  # the bounds of aigc.config, where the recipe's settings get them
            try:
                bounds.validate_python(getattr(self, name))
            except ValidationError as err:
                raise GenerationError(f"{name}={getattr(self, name)!r}: {err.errors()[0]['msg'].lower()}") from None
        if any(not s for s in self.stop):
            raise GenerationError("stop strings must not be empty")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise GenerationError(f"seed must be in [0, 2**63) (got {self.seed})")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def sampling_params(settings: GenerateConfig, **request: object) -> SamplingParams:
    """The one mapping from a run's ``generate`` settings (plus per-request values) to :class:`SamplingParams`.

    ``request`` holds what a caller sets beyond the settings (``seed``, ``logprobs``, ``ignore_eos``,
    ``stop_token_ids``, ``truncate_prompt``) or overrides (``max_new_tokens``, ``stop``).
    """
    fields = {name: getattr(settings, name) for name in SAMPLING_SETTINGS}
    fields["stop"] = tuple(settings.stop)
    return SamplingParams(**(fields | request))


SAMPLING_SETTINGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                     "presence_penalty", "frequency_penalty")


def apply_penalties(logits: torch.Tensor, seen: torch.Tensor, generated: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Penalise repeats. logits (B, V); ``seen`` (B, V) counts in prompt + output; ``generated`` (B, V) in output.

    repetition (CTRL / Hugging Face): seen tokens' positive logits divided, negative ones multiplied;
    presence and frequency (OpenAI): subtract ``presence`` once and ``frequency`` per occurrence.
    """
    if params.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty)
        logits = torch.where(seen > 0, penalised, logits)
    if params.presence_penalty or params.frequency_penalty:
        logits = logits - params.presence_penalty * (generated > 0) - params.frequency_penalty * generated
    return logits


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Set to -inf every logit outside top-k, outside the top-p nucleus, or below min-p * max prob. (B, V)."""
    if params.top_k is not None and params.top_k < logits.size(-1):
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= params.top_p  # keep the token that crosses top_p
        drop_sorted[..., 0] = False  # and always the most likely one (a top_p that rounds to 0 in float32)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if params.min_p > 0:
        probs = logits.softmax(-1)
        threshold = params.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits


def choose(logits: torch.Tensor, params: SamplingParams, generators: list[torch.Generator]) -> torch.Tensor:
    """Next token per row, (B,). Greedy at temperature 0, else one draw per row from its own generator."""
    if params.greedy:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / params.temperature, params).softmax(-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
