"""The decoding engine: prefill, then one token per step with the KV cache, for a batch of prompts.

It knows nothing about text: prompts are lists of token ids and it yields token ids (and their
log-probabilities). Prompts of different lengths are left-padded; each row gets its own positions
(counted from its first real token) and a mask that hides the padding, so a row decodes exactly as it
would alone. Callers mark rows finished (stop strings, stop ids) through :class:`DecodeState`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from aigc.errors import GenerationError
from aigc.generate.sampling import SamplingParams, apply_penalties, choose
from aigc.models.gpt import GPT


@dataclass(frozen=True)
class TokenStep:
    token: int
    logprob: float | None


@dataclass
class DecodeState:
    """Which rows are finished; the caller sets entries to True and the engine stops feeding them."""

    finished: list[bool] = field(default_factory=list)


def _generators(params: SamplingParams, rows: int) -> list[torch.Generator]:
    """One generator per row: seed + row when seeded (reproducible), else fresh entropy."""
    base = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
    return [torch.Generator().manual_seed(base + row) for row in range(rows)]


class Engine:
    """Batched autoregressive decoding over a :class:`~aigc.models.gpt.GPT`."""

    def __init__(self, model: GPT):
        self.model = model.eval()
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size

    def _forward(self, idx, caches, positions, mask) -> torch.Tensor:
        """Logits of each row's last position, float32 (B, V)."""
        return self.model(idx, caches=caches, positions=positions, mask=mask, last_only=True)[:, -1].float()

    @torch.inference_mode()
    def steps(
        self, prompts: list[list[int]], params: SamplingParams, state: DecodeState | None = None, use_cache: bool = True
    ) -> Iterator[list[TokenStep | None]]:
        """Yield, per decoding step, one :class:`TokenStep` per row (None for rows already finished).

        Stops after ``params.max_new_tokens`` steps, when every row is finished, or when the longest row
        fills the model's context.
        """
        if not prompts or any(not p for p in prompts):
            raise GenerationError("every prompt needs at least one token")
        longest = max(map(len, prompts))
        if longest > self.block_size:
            raise GenerationError(f"a prompt has {longest} tokens; the model's context is {self.block_size}")
        device = self.model.wte.weight.device
        rows = len(prompts)
        state = state or DecodeState()
        state.finished = [False] * rows
        pads = torch.tensor([longest - len(p) for p in prompts], device=device)
        idx = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)  # (B, L)
        valid = torch.arange(longest, device=device)[None, :] >= pads[:, None]  # (B, L) real tokens
        padded = bool(pads.any())
        steps = min(params.max_new_tokens, self.block_size - longest + 1)
        generators = _generators(params, rows)
        seen = torch.zeros(rows, self.vocab_size, device=device)
        seen.scatter_add_(1, idx, valid.float())
        generated = torch.zeros_like(seen)

        caches = self.model.new_caches(rows, longest + steps) if use_cache else None
        positions = (torch.arange(longest, device=device)[None, :] - pads[:, None]).clamp(min=0)
        logits = self._forward(idx, caches, positions if padded else None, _prefill_mask(valid) if padded else None)
        for step in range(steps):
            processed = apply_penalties(logits, seen, generated, params)
            tokens = choose(processed, params, generators)  # (B,)
            logprobs = logits.log_softmax(-1).gather(1, tokens[:, None])[:, 0] if params.logprobs else None
            yield [
                None if state.finished[r] else TokenStep(int(tokens[r]), float(logprobs[r]) if logprobs is not None else None)
                for r in range(rows)
            ]
            if all(state.finished) or step == steps - 1:
                return
            ones = torch.ones(rows, 1, device=device)
            seen.scatter_add_(1, tokens[:, None], ones)
            generated.scatter_add_(1, tokens[:, None], ones)
            valid = torch.cat([valid, torch.ones(rows, 1, dtype=torch.bool, device=device)], dim=1)
            idx = torch.cat([idx, tokens[:, None]], dim=1)
            if use_cache:
                next_positions = positions[:, -1:] + 1
                positions = torch.cat([positions, next_positions], dim=1)
                mask = valid[:, None, None, :] if padded else None  # (B, 1, 1, S)
                logits = self._forward(tokens[:, None], caches, next_positions if padded else None, mask)
            else:
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=1)
                logits = self._forward(idx, None, positions if padded else None, _prefill_mask(valid) if padded else None)


def _prefill_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: causal, padding hidden; a padding query sees itself so no softmax row is empty."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :]
    return (mask | torch.eye(T, dtype=torch.bool, device=valid.device)[None])[:, None]
