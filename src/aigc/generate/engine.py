"""The decoding engine: token ids in, token ids out, for the decoder-only GPT and the encoder-decoder.

Every kind of decoding runs the one decode core (:mod:`aigc.generate.decode`): a batch layout turns ids into
logits and each :class:`~aigc.generate.decode.Row` chooses its next token. :meth:`DecoderEngine.steps` decodes a
GPT's left-padded prompts; :meth:`Engine.translate` the encoder-decoder's sources, encoded once, by the same rows
(greedy or sampling) or by beam search over the batch's log-probabilities; :meth:`Engine.draw` the caption-prefix
model's pixels or audio tokens, with classifier-free guidance.

It knows nothing about text: tokenizers turn text into ids at the edges (:mod:`aigc.generate.text`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from aigc.errors import GenerationError
from aigc.generate.beam import BeamParams, Hypothesis, beam_search
from aigc.generate.decode import (ContinuousBatch, EncodedBatch, Event, GuidedBatch, PaddedBatch, PromptBatch, Row,
                                  seed_base)
from aigc.generate.sampling import SamplingParams
from aigc.generate.prefix_cache import PrefixCache
from aigc.generate.slots import SlotBatch
from aigc.models.gpt import GPT
from aigc.models.seq2seq import Seq2Seq


class DecoderEngine:
    """Decoding of a decoder-only GPT's prompts through the decode core, over a backend's two batch layouts.

    Subclasses set ``model``, ``block_size`` and ``vocab_size`` and make the layouts: :class:`Engine` on
    PyTorch, :class:`~aigc.generate.llamacpp.LlamaCppEngine` on llama.cpp.
    """

    model: object
    block_size: int
    vocab_size: int

    @property
    def device(self) -> torch.device:
        """Where rows keep their prompts, counts and generators: the device of the logits."""
        raise NotImplementedError

    def padded_batch(self, prompts: list[list[int]], steps: int, use_cache: bool = True) -> PromptBatch:
        """The layout :meth:`steps` decodes ``prompts`` in, with room for ``steps`` new tokens each."""
        raise NotImplementedError

    def slot_batch(self, slots: int, prefix_cache_bytes: int = 0) -> ContinuousBatch:
        """The layout the server's continuous batching runs ``slots`` rows in, keeping up to
        ``prefix_cache_bytes`` of prompt prefixes' keys and values for later prompts (where the backend can)."""
        raise NotImplementedError

    def steps_for(self, prompts: list[list[int]], params: SamplingParams) -> list[int]:
        """How many tokens each of ``prompts`` may produce: ``max_new_tokens``, or what the context leaves it.

        Each row's own room: a short prompt batched with a long one is not cut to the long one's room."""
        if not prompts or any(not p for p in prompts):
            raise GenerationError("every prompt needs at least one token")
        longest = max(map(len, prompts))
        if longest > self.block_size:
            raise GenerationError(f"a prompt has {longest} tokens; the model's context is {self.block_size}")
        return [min(params.max_new_tokens, self.block_size - len(p) + 1) for p in prompts]

    @torch.inference_mode()
    def steps(self, prompts: list[list[int]], params: SamplingParams, use_cache: bool = True,
              rows: list[Row] | None = None) -> Iterator[list[Event | None]]:
        """Yield, per decoding step, one :class:`Event` per row (None for rows already finished).

        ``rows`` (one per prompt, from :meth:`rows` with :meth:`steps_for`'s limits) carry text streams and stop
        ids; by default the rows produce tokens only. Stops when every row has finished (each ends at its limit
        at the latest).
        """
        rows = rows if rows is not None else self.rows(prompts, params, self.steps_for(prompts, params))
        yield from self.decode(self.padded_batch(prompts, max(row.limit for row in rows), use_cache), rows)

    def decode(self, batch: PromptBatch, rows: list[Row]) -> Iterator[list[Event | None]]:
        """The decode core's loop: ``batch``'s logits to its ``rows``, one step at a time, each row's token fed back;
        yields one :class:`Event` per row per step (None for rows already finished) until every row has finished."""
        logits = batch.prefill()
        while True:
            yield [None if row.done else row.accept(row_logits) for row, row_logits in zip(rows, logits)]
            if all(row.done for row in rows):
                return
            logits = batch.decode_step(torch.tensor([row.last for row in rows], device=self.device))

    def rows(self, prompts: list[list[int]], params: SamplingParams, limits: list[int], vocab_size: int | None = None,
             **options) -> list[Row]:
        """One :class:`Row` per prompt, seeded ``base + i``, producing at most ``limits[i]`` tokens among
        ``vocab_size`` ids (default the model's); ``options`` go to every row (decode, stop_ids, ...)."""
        base, vocab = seed_base(params), vocab_size or self.vocab_size
        return [Row(i, torch.tensor(p, dtype=torch.long, device=self.device), params, vocab, limit, base + i, **options)
                for i, (p, limit) in enumerate(zip(prompts, limits))]


class Engine(DecoderEngine):
    """Batched autoregressive decoding over a :class:`~aigc.models.gpt.GPT` or a :class:`~aigc.models.seq2seq.Seq2Seq`
    on PyTorch: the decoder-only GPT's prompts, the encoder-decoder's sources, the caption-prefix model's pixels."""

    def __init__(self, model: GPT | Seq2Seq):
        self.model = model.eval()
        self.block_size = model.config.block_size
        self.vocab_size = model.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self.model.wte.weight.device

    def padded_batch(self, prompts: list[list[int]], steps: int, use_cache: bool = True) -> PaddedBatch:
        return PaddedBatch(self.model, prompts, steps, use_cache)

    def slot_batch(self, slots: int, prefix_cache_bytes: int = 0) -> SlotBatch:
        return SlotBatch(self.model, slots, prefix_cache=PrefixCache(prefix_cache_bytes) if prefix_cache_bytes else None)

    @torch.inference_mode()
    def translate(self, sources: list[list[int]], start: int, end: int, params: SamplingParams,
                  beam: BeamParams | None = None) -> list[list[Hypothesis]]:
        """Target ids for each source (without start/end): beam search when ``beam``, else greedy or sampling.

        Returns a list of hypotheses per source (``beam.n_best`` of them with beam search, else one, scored by its
        mean log-probability per token).
        """
        if not sources or any(not s for s in sources):
            raise GenerationError("every source needs at least one token")
        width = max(map(len, sources))
        if width > self.block_size:
            raise GenerationError(f"a source has {width} tokens; the model's context is {self.block_size}")
        limit = min(beam.max_new_tokens if beam else params.max_new_tokens, self.block_size)
        batch = EncodedBatch(self.model, sources, limit, start, beam.beams if beam else 1)
        if beam is not None:
            return beam_search(self._logprobs(batch), len(sources), start, end,
                               dataclasses.replace(beam, max_new_tokens=limit))
        params = dataclasses.replace(params, logprobs=True)  # each hypothesis is scored by its tokens' log-probs
        # no prompt of their own: penalties count the translation alone
        rows = self.rows([[]] * len(sources), params, [limit] * len(sources), stop_ids=frozenset({end}))
        chosen: list[list[tuple[int, float]]] = [[] for _ in rows]
        for events in self.decode(batch, rows):
            for event in filter(None, events):
                if event.token != end:
                    chosen[event.index].append((event.token, event.logprob))
        return [[Hypothesis([t for t, _ in row], sum(lp for _, lp in row) / max(len(row), 1))] for row in chosen]

    @staticmethod
    def _logprobs(batch: EncodedBatch):
        """Beam search's view of ``batch``: its log-probabilities (N, V) on the CPU after each step, the rows first
        reordered to follow the hypotheses that survived (``order``; None at the first step, the start token)."""

        def next_logprobs(tokens: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
            if order is None:
                return batch.prefill().log_softmax(-1).cpu()
            batch.reorder(order)
            return batch.decode_step(tokens).log_softmax(-1).cpu()

        return next_logprobs

    @torch.inference_mode()
    def draw(self, prefixes: list[list[int]], blank: list[int], length: int, first_id: int, params: SamplingParams,
             guidance: float = 1.0) -> torch.Tensor:
        """Caption-prefix model: ``length`` draws per prefix among ids ``first_id ..`` -> (B, length), relative to
        ``first_id`` (palette indices, audio codes). Every prefix has the model's caption-prefix length; with
        ``guidance`` != 1 the logits are guided by the ``blank`` prefix's (:class:`GuidedBatch`)."""
        batch = GuidedBatch(self.model, prefixes, blank, length, first_id, guidance)
        rows = self.rows([[]] * len(prefixes), params, [length] * len(prefixes), self.vocab_size - first_id)
        drawn = torch.empty(len(rows), length, dtype=torch.long)
        for step, events in enumerate(self.decode(batch, rows)):
            drawn[:, step] = torch.tensor([event.token for event in events])
        return drawn
