"""The decoding engine: token ids in, token ids out, for the decoder-only GPT and the encoder-decoder.

For the decoder-only GPT, :meth:`Engine.steps` runs the decode core (:mod:`aigc.generate.decode`) over
a left-padded batch. For the encoder-decoder, :meth:`Engine.translate` encodes the sources once
(cross-attention keys/values precomputed) and decodes from ``<|endoftext|>`` by sampling or by beam
search. :meth:`Engine.draw` samples the pixels of the caption-prefix image model.

It knows nothing about text: tokenizers turn text into ids at the edges (:mod:`aigc.generate.text`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from aigc.errors import GenerationError
from aigc.generate.beam import BeamParams, Hypothesis, beam_search
from aigc.generate.decode import ContinuousBatch, Event, PaddedBatch, PromptBatch, Row, next_logits, seed_base
from aigc.generate.sampling import SamplingParams, apply_penalties, choose
from aigc.generate.slots import SlotBatch
from aigc.models.gpt import GPT
from aigc.models.seq2seq import Seq2Seq


def _generators(params: SamplingParams, rows: int, device: torch.device) -> list[torch.Generator]:
    """One generator per row on ``device`` (where the logits are), seeded ``base + row``."""
    base = seed_base(params)
    return [torch.Generator(device=device).manual_seed(base + row) for row in range(rows)]


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

    def slot_batch(self, slots: int) -> ContinuousBatch:
        """The layout the server's continuous batching runs ``slots`` rows in."""
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
        batch = self.padded_batch(prompts, max(row.limit for row in rows), use_cache)
        logits = batch.prefill()
        while True:
            yield [None if row.done else row.accept(row_logits) for row, row_logits in zip(rows, logits)]
            if all(row.done for row in rows):
                return
            logits = batch.decode_step(torch.tensor([row.last for row in rows], device=self.device))

    def rows(self, prompts: list[list[int]], params: SamplingParams, limits: list[int], **options) -> list[Row]:
        """One :class:`Row` per prompt, seeded ``base + i``, producing at most ``limits[i]`` tokens; ``options``
        go to every row (decode, stop_ids, ...)."""
        base = seed_base(params)
        return [Row(i, torch.tensor(p, device=self.device), params, self.vocab_size, limit, base + i, **options)
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

    def slot_batch(self, slots: int) -> SlotBatch:
        return SlotBatch(self.model, slots)

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
        generators = _generators(params, rows, torch.device("cpu"))  # log-probs come back on the CPU
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
        generators = _generators(params, batch, torch.device("cpu"))  # the guided logits are moved to the CPU
        out = torch.empty(batch, length, dtype=torch.long)
        logits = next_logits(self.model, idx, caches)
        for i in range(length):
            logits = logits[:, first_id:].cpu()
            if guided:
                logits = logits[batch:] + guidance * (logits[:batch] - logits[batch:])
            out[:, i] = choose(logits, params, generators)
            if i < length - 1:
                tokens = (out[:, i] + first_id).repeat(2 if guided else 1)[:, None].to(device)
                logits = next_logits(self.model, tokens, caches)
        return out
