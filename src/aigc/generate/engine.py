"""The decoding engine: prefill, then one token per step with the KV cache, for a batch of prompts.

For the decoder-only GPT, :meth:`Engine.steps` continues prompts. For the encoder-decoder,
:meth:`Engine.translate` encodes the sources once (cross-attention keys/values precomputed) and
decodes from ``<|endoftext|>`` by sampling or by beam search.


It knows nothing about text: prompts are lists of token ids and it yields token ids (and their
log-probabilities). Prompts of different lengths are left-padded; each row gets its own positions
(counted from its first real token) and a mask that hides the padding, so a row decodes exactly as it
would alone. Callers mark rows finished (stop strings, stop ids) through :class:`DecodeState`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from aigc.errors import GenerationError
from aigc.generate.sampling import SamplingParams, apply_penalties, choose
from aigc.generate.beam import BeamParams, Hypothesis, beam_search
from aigc.models.gpt import GPT
from aigc.models.seq2seq import Seq2Seq


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
    """Batched autoregressive decoding over a :class:`~aigc.models.gpt.GPT` or a :class:`~aigc.models.seq2seq.Seq2Seq`."""

    def __init__(self, model: GPT | Seq2Seq):
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


    def _encode(self, sources: list[list[int]], repeat: int = 1):
        """Right-padded sources -> per-layer cross K/V and mask, each row repeated ``repeat`` times (beams)."""
        if not sources or any(not s for s in sources):
            raise GenerationError("every source needs at least one token")
        device = self.model.wte.weight.device
        width = max(map(len, sources))
        if width > self.block_size:
            raise GenerationError(f"a source has {width} tokens; the model's context is {self.block_size}")
        ids = torch.tensor([s + [0] * (width - len(s)) for s in sources], device=device)
        mask = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in sources], device=device)
        if repeat > 1:
            ids, mask = ids.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
        return self.model.encode(ids, mask)

    @torch.inference_mode()
    def translate(self, sources: list[list[int]], start: int, end: int, params: SamplingParams,
                  beam: BeamParams | None = None) -> list[list[Hypothesis]]:
        """Target ids for each source (without start/end): beam search when ``beam``, else greedy or sampling.

        Returns a list of hypotheses per source (``beam.n_best`` of them with beam search, else one).
        """
        device = self.model.wte.weight.device
        rows = len(sources) * (beam.beams if beam else 1)
        memory, mask = self._encode(sources, beam.beams if beam else 1)
        limit = min(beam.max_new_tokens if beam else params.max_new_tokens, self.block_size)
        caches = self.model.new_caches(rows, limit + 1)

        def next_logprobs(tokens: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
            if order is not None:
                for cache in caches:
                    cache.reorder(order.to(device))
            logits = self.model.decode(tokens.to(device)[:, None], memory, mask, caches, last_only=True)[:, -1]
            return logits.float().log_softmax(-1).cpu()

        if beam is not None:
            return beam_search(next_logprobs, len(sources), start, end, dataclasses.replace(beam, max_new_tokens=limit))
        generators = _generators(params, rows)
        tokens = torch.full((rows,), start, dtype=torch.long)
        written = torch.full((rows, limit), end, dtype=torch.long)  # each row's tokens, until its end token
        lengths = torch.full((rows,), limit, dtype=torch.long)
        scores = torch.zeros(rows)
        finished = torch.zeros(rows, dtype=torch.bool)
        seen = torch.zeros(rows, self.vocab_size)
        for step in range(limit):
            logprobs = next_logprobs(tokens, None)
            tokens = choose(apply_penalties(logprobs, seen, seen, params), params, generators)
            ended = (tokens == end) & ~finished
            lengths[ended] = step
            finished |= ended
            scores += torch.where(finished, 0.0, logprobs.gather(1, tokens[:, None])[:, 0])
            written[:, step] = tokens
            seen.scatter_add_(1, tokens[:, None], torch.ones(rows, 1))
            if bool(finished.all()):
                break
        return [[Hypothesis(row[:length].tolist(), score / max(length, 1))]
                for row, length, score in zip(written, lengths.tolist(), scores.tolist())]


    @torch.inference_mode()
    def draw(self, prefixes: list[list[int]], blank: list[int], length: int, first_id: int, params: SamplingParams,
             guidance: float = 1.0) -> torch.Tensor:
        """Caption-prefix image model: ``length`` draws per prefix among ids ``first_id ..`` -> (B, length).

        Every prefix has the model's ``image_prefix`` tokens. Returned values are relative to
        ``first_id`` (palette indices). With ``guidance`` != 1 each row also decodes from the ``blank``
        (caption-free) prefix, and the logits are ``uncond + guidance * (cond - uncond)``
        (classifier-free guidance); guidance 1 is plain sampling.
        """
        batch, guided = len(prefixes), guidance != 1.0
        device = self.model.wte.weight.device
        idx = torch.tensor(prefixes + ([blank] * batch if guided else []), device=device)
        caches = self.model.new_caches(len(idx), idx.shape[1] + length)
        generators = _generators(params, batch)
        out = torch.empty(batch, length, dtype=torch.long)
        logits = self._forward(idx, caches, None, None)
        for i in range(length):
            logits = logits[:, first_id:].cpu()
            if guided:
                logits = logits[batch:] + guidance * (logits[:batch] - logits[batch:])
            out[:, i] = choose(logits, params, generators)
            if i < length - 1:
                tokens = (out[:, i] + first_id).repeat(2 if guided else 1)[:, None].to(device)
                logits = self._forward(tokens, caches, None, None)
        return out


def _prefill_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: causal, padding hidden; a padding query sees itself so no softmax row is empty."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :]
    return (mask | torch.eye(T, dtype=torch.bool, device=valid.device)[None])[:, None]
