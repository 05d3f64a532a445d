"""The one decode core: batch layouts that turn token ids into next-token logits, and a per-row ``accept``.

The layouts: :class:`PaddedBatch` (a GPT's left-padded prompts decoded together, for ``aigc generate`` and
the evaluation), :class:`~aigc.generate.slots.SlotBatch` (rows that join and leave between steps, for the
server's continuous batching), :class:`EncodedBatch` (the encoder-decoder's sources, encoded once, with
:meth:`~EncodedBatch.reorder` for beam search) and :class:`GuidedBatch` (caption-prefix drawing with
classifier-free guidance). Everything that happens to a row's logits after that is :meth:`Row.accept`:
penalties, sampling with the row's own generator (on the logits' device), log-probabilities, stop ids, stop
strings, end of text and the token limit. A row that fails raises from ``accept``; the caller ends that row
(and its request) alone. Beam search (:mod:`aigc.generate.beam`) chooses over a batch's log-probabilities
instead of rows.

Shapes: B = rows, L = longest prompt, V = vocabulary, S = keys after this step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from aigc.errors import GenerationError
from aigc.generate.grammar import Constraints
from aigc.generate.prefix_cache import PrefixCache
from aigc.generate.sampling import SamplingParams, apply_penalties, choose
from aigc.generate.stream import TextStream


@dataclass
class Event:
    """One increment of row (choice) ``index``; its last event has ``finish_reason`` or ``error``."""

    index: int
    text: str = ""
    token: int | None = None
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    error: str | None = None
    timed_out: bool = False  # the error is the request's deadline, not a failure


class PromptBatch(Protocol):
    """Prompts decoded together (:class:`PaddedBatch`, or llama.cpp's): the logits of every row, step by step."""

    def prefill(self) -> torch.Tensor:
        """Logits after every prompt, (B, V)."""

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row, (B,); logits after it, (B, V)."""


class ContinuousBatch(Protocol):
    """Rows that join and leave between steps (:class:`~aigc.generate.slots.SlotBatch`, or llama.cpp's); the live
    rows are slots ``0 .. active - 1``, each holding at most ``capacity`` tokens. ``scores_prompts``: whether
    ``prefill`` can return the logits after every prompt token."""

    active: int
    capacity: int
    scores_prompts: bool
    prefix_cache: PrefixCache | None  # prompt prefixes kept for later prompts, where the backend keeps them

    def prefill(self, prompt: list[int], copies: int, every_position: bool = False) -> tuple[torch.Tensor, list[int]]:
        """Run ``prompt`` (L tokens) into ``copies`` free slots: the logits after it (V,), or with ``every_position``
        after each of its tokens (L, V); and the slots. Nothing kept on failure."""

    def start(self, prompt: list[int], every_position: bool = False) -> object:
        """The same prefill, to run a chunk at a time between decoding steps: what :meth:`run` advances."""

    def run(self, prefill: object, tokens: int) -> tuple[int, bool]:
        """Compute up to ``tokens`` more positions of ``prefill``: how many it computed, and whether its prompt is
        done."""

    def place(self, prefill: object, copies: int) -> tuple[torch.Tensor, list[int]]:
        """Load a done prefill into ``copies`` free slots: :meth:`prefill`'s logits and slots."""

    def step(self, tokens: list[int]) -> torch.Tensor:
        """One token per live row -> the logits after it, (B, V)."""

    def remove(self, slot: int) -> int | None:
        """Free ``slot`` by moving the last live row into it; return the row that moved (None if none did)."""

    def reset(self) -> None:
        """Free every slot."""


def seed_base(params: SamplingParams) -> int:
    """Row ``i`` of a call is seeded ``base + i``: ``base`` is the request's seed, else fresh entropy."""
    return params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())


class Row:
    """One sequence being decoded: its generator, token counts, text stream and limits.

    ``prompt`` (L,) ids on the model's device; ``limit`` is the most tokens this row may produce (its
    ``max_new_tokens`` or what the context leaves). Without ``decode`` the row yields tokens only
    (no text, no stop strings). A row whose params carry a grammar samples only the tokens it allows (from
    ``constraints``, its tokenizer's); it ends ``stop`` when the grammar is complete, and ``constraint`` when
    nothing the vocabulary holds can continue it.
    """

    def __init__(self, index: int, prompt: torch.Tensor, params: SamplingParams, vocab_size: int, limit: int,
                 seed: int, decode: Callable[[list[int]], str] | None = None, stop_ids: frozenset[int] = frozenset(),
                 top_logprobs: int = 0, constraints: Constraints | None = None):
        device = prompt.device
        self.index, self.params, self.limit, self.top_logprobs = index, params, limit, top_logprobs
        self.stop_ids = stop_ids | frozenset(params.stop_token_ids)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.seen = torch.zeros(1, vocab_size, device=device).index_add_(1, prompt, torch.ones(1, len(prompt), device=device))
        self.generated = torch.zeros(1, vocab_size, device=device)
        self.stream = TextStream(decode, params.stop) if decode is not None else None
        self.produced, self.last, self.done = 0, -1, False
        if params.grammar is not None and constraints is None:
            raise GenerationError("this model cannot constrain its output to a grammar")
        self.matcher = constraints.matcher(params.grammar) if params.grammar is not None else None

    def accept(self, logits: torch.Tensor) -> Event:
        """Choose the next token from this row's logits (V,) float32 and say what became final."""
        params = self.params
        shaped = apply_penalties(logits[None], self.seen, self.generated, params)
        if self.matcher is not None:
            blocked = self.matcher.blocked()
            if blocked is None:
                return self._cannot_continue()
            shaped = shaped.masked_fill(blocked.to(shaped.device), float("-inf"))
        token = int(choose(shaped, params, [self.generator]))
        if self.matcher is not None and token not in self.stop_ids and not self.matcher.take(token):
            return self._cannot_continue()
        self.seen[0, token] += 1
        self.generated[0, token] += 1
        self.produced += 1
        self.last = token
        event = Event(self.index, token=token)
        if params.logprobs:
            logprobs = logits.log_softmax(-1)
            event.logprob = float(logprobs[token])
            if self.top_logprobs:
                values, ids = logprobs.topk(min(self.top_logprobs, len(logprobs)))
                event.top_logprobs = list(zip(ids.tolist(), values.tolist()))
        if token in self.stop_ids:
            event.text, event.finish_reason = self.stream.finish() if self.stream else "", "stop"
        else:
            event.text = self.stream.add(token) if self.stream else ""
            if self.stream is not None and self.stream.stopped:
                event.finish_reason = "stop"
            elif self.matcher is not None and self.matcher.complete:  # nothing but the end of text may follow
                event.text += self.stream.finish() if self.stream else ""
                event.finish_reason = "stop"
            elif self.produced >= self.limit:
                event.text += self.stream.finish() if self.stream else ""
                event.finish_reason = "length"
        self.done = event.finish_reason is not None
        return event

    def _cannot_continue(self) -> Event:
        """End a constrained row that no token of the vocabulary can continue (finish reason ``constraint``)."""
        self.done = True
        return Event(self.index, text=self.stream.finish() if self.stream else "", finish_reason="constraint")


@dataclass
class PromptToken:
    """A prompt token's log-probability given the tokens before it, and the ``top`` most likely tokens there."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def prompt_logprobs(prompt: list[int], logits: torch.Tensor, top: int) -> list[PromptToken]:
    """Score every prompt token after the first (nothing predicts the first). ``logits`` (L, V): after each
    token, so row ``t`` predicts token ``t + 1``."""
    logprobs = logits[:-1].float().log_softmax(-1)  # (L - 1, V)
    targets = torch.tensor(prompt[1:], dtype=torch.long, device=logits.device)
    chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
    if top:
        values, ids = logprobs.topk(min(top, logprobs.shape[-1]))
        tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [[] for _ in chosen]
    return [PromptToken(token, logprob, best) for token, logprob, best in zip(prompt[1:], chosen, tops)]


def next_logits(model, ids: torch.Tensor, caches, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of each row's last position, float32 (B, V): the forward pass of prefill and of a decode step."""
    return model(ids, caches=caches, positions=positions, mask=mask, last_only=True)[:, -1].float()


class PaddedBatch:
    """Left-padded prompts decoded together with a KV cache sized for ``steps`` new tokens.

    Each row gets its own positions (counted from its first real token) and a mask that hides the
    padding, so a row decodes exactly as it would alone, and as far as its own room in the context.
    ``use_cache=False`` recomputes the whole sequence every step (the reference the cached path is tested
    against).
    """

    def __init__(self, model, prompts: list[list[int]], steps: int, use_cache: bool = True):
        device = model.wte.weight.device
        self.model, self.use_cache = model, use_cache
        longest = max(map(len, prompts))
        pads = torch.tensor([longest - len(p) for p in prompts], device=device)
        self.idx = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=device)  # (B, L)
        self.valid = torch.arange(longest, device=device)[None, :] >= pads[:, None]  # (B, L) real tokens
        self.padded = bool(pads.any())
        self.positions = (torch.arange(longest, device=device)[None, :] - pads[:, None]).clamp(min=0)
        self.caches = model.new_caches(len(prompts), longest + steps) if use_cache else None

    def prefill(self) -> torch.Tensor:
        """Logits after every prompt, (B, V)."""
        return self._forward(self.idx, self.positions, self.valid)

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row, (B,); logits after it, (B, V)."""
        rows = len(tokens)
        self.valid = torch.cat([self.valid, torch.ones(rows, 1, dtype=torch.bool, device=tokens.device)], dim=1)
        self.idx = torch.cat([self.idx, tokens[:, None]], dim=1)
        # a row that has used its room in the context is done and its logits unused: it only must not index past it
        next_positions = (self.positions[:, -1:] + 1).clamp(max=self.model.config.block_size - 1)
        self.positions = torch.cat([self.positions, next_positions], dim=1)
        if not self.use_cache:
            return self._forward(self.idx, self.positions, self.valid)
        mask = self.valid[:, None, None, :] if self.padded else None  # (B, 1, 1, S)
        return next_logits(self.model, tokens[:, None], self.caches, next_positions if self.padded else None, mask)

    def _forward(self, idx: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if not self.padded:
            return next_logits(self.model, idx, self.caches)
        return next_logits(self.model, idx, self.caches, positions, _prefill_mask(valid))


def _prefill_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: causal, padding hidden; a padding query sees itself so no softmax row is empty."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :]
    return (mask | torch.eye(T, dtype=torch.bool, device=valid.device)[None])[:, None]


class EncodedBatch:
    """The encoder-decoder's sources, right-padded and encoded once (each decoder layer's cross-attention keys and
    values precomputed), ``repeat`` rows per source (beams); every row's target starts from ``start``.

    ``sources``: token ids, each ending with the end token; ``steps``: target tokens to make room for.
    """

    def __init__(self, model, sources: list[list[int]], steps: int, start: int, repeat: int):
        device = model.wte.weight.device
        width = max(map(len, sources))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in sources], device=device)  # (B, S)
        mask = torch.tensor([[True] * len(s) + [False] * (width - len(s)) for s in sources], device=device)
        if repeat > 1:
            ids, mask = ids.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
        self.model, self.start, self.device = model, start, device
        self.memory, self.mask = model.encode(ids, mask)
        self.caches = model.new_caches(len(ids), steps + 1)

    def prefill(self) -> torch.Tensor:
        """Logits after each row's start token, (B, V)."""
        return self.decode_step(torch.full((len(self.mask),), self.start, dtype=torch.long, device=self.device))

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one target token per row, (B,); logits after it, (B, V)."""
        return self.model.decode(tokens.to(self.device)[:, None], self.memory, self.mask, self.caches,
                                 last_only=True)[:, -1].float()

    def reorder(self, order: torch.Tensor) -> None:
        """Keep rows ``order`` (B,), in that order: beam search continues the hypotheses that survived."""
        for cache in self.caches:
            cache.reorder(order.to(self.device))


class GuidedBatch:
    """Caption-prefix drawing: the caption-prefix GPT continues each prefix with tokens among ids ``first_id ..``,
    and the logits of those ids, (B, V - first_id), are what rows choose from; tokens fed back are relative to
    ``first_id``. With ``guidance`` != 1 each row also decodes from the ``blank`` (caption-free) prefix, and its
    logits are ``uncond + guidance * (cond - uncond)`` (classifier-free guidance); guidance 1 is plain sampling.
    Every prefix has the same length (the model's caption prefix), so no row is padded.
    """

    def __init__(self, model, prefixes: list[list[int]], blank: list[int], steps: int, first_id: int, guidance: float):
        self.first_id, self.guidance, self.rows = first_id, guidance, len(prefixes)
        self.guided = guidance != 1.0
        self.inner = PaddedBatch(model, prefixes + ([blank] * len(prefixes) if self.guided else []), steps)

    def prefill(self) -> torch.Tensor:
        """The mixed logits after every prefix, (B, V - first_id)."""
        return self._mixed(self.inner.prefill())

    def decode_step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row, (B,) relative to ``first_id``; the mixed logits after it."""
        absolute = tokens + self.first_id
        return self._mixed(self.inner.decode_step(absolute.repeat(2) if self.guided else absolute))

    def _mixed(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[:, self.first_id :]
        if not self.guided:
            return logits
        conditional, unconditional = logits[: self.rows], logits[self.rows :]
        return unconditional + self.guidance * (conditional - unconditional)
