"""Text on top of the engine: encode prompts, stream final text with stop strings, whole completions.

Streaming rows come from the decode core (:class:`~aigc.generate.decode.Row`), which holds text back
until it is final (:class:`~aigc.generate.stream.TextStream`), so streamed and whole outputs agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from aigc.checkpoint import load_checkpoint
from aigc.errors import GenerationError
from aigc.generate.decode import Event
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams
from aigc.generate.beam import BeamParams
from aigc.models import build_model
from aigc.models.gpt import GPT
from aigc.models.seq2seq import Seq2Seq
from aigc.tokenizer import TARGET_TOKENIZER, eot_id

log = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None


class TextGenerator:
    """Prompts in, text out: a tokenizer and the one engine."""

    def __init__(self, model: GPT | Seq2Seq, tokenizer: Tokenizer, target_tokenizer: Tokenizer | None = None):
        """``target_tokenizer``: an encoder-decoder with a tokenizer per side; its ids follow the source's."""
        self.model, self.tokenizer, self.target_tokenizer = model, tokenizer, target_tokenizer
        self.engine = Engine(model)
        self.eot = eot_id(tokenizer)
        self.target_offset = tokenizer.get_vocab_size(with_added_tokens=True) if target_tokenizer else 0
        self.target_eot = self.target_offset + eot_id(target_tokenizer) if target_tokenizer else self.eot

    @classmethod
    def from_checkpoint(cls, path: Path, device: str = "cpu") -> TextGenerator:
        """Load a checkpoint folder or a run directory (its latest checkpoint)."""
        checkpoint = load_checkpoint(path)
        model = build_model(checkpoint.config.model)
        model.load_state_dict(checkpoint.model_state())
        tokenizer = Tokenizer.from_file(str(checkpoint.path / "tokenizer.json"))
        target = checkpoint.path / TARGET_TOKENIZER
        return cls(model.to(device).eval(), tokenizer, Tokenizer.from_file(str(target)) if target.is_file() else None)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def decode_target(self, ids: list[int]) -> str:
        """Text of an encoder-decoder's output ids (the target tokenizer's, when the sides have their own)."""
        if self.target_tokenizer is None:
            return self.decode(ids)
        return self.target_tokenizer.decode([i - self.target_offset for i in ids], skip_special_tokens=False)

    def encode_prompt(self, prompt: str, params: SamplingParams) -> list[int]:
        """Token ids of ``prompt``, cut from the left to leave room for one new token if asked to."""
        if not prompt:
            raise GenerationError("the prompt is empty; give some text to continue")
        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        room = self.engine.block_size - 1
        if len(ids) > room:
            if not params.truncate_prompt:
                raise GenerationError(f"the prompt is {len(ids)} tokens; the model's context is {self.engine.block_size}")
            log.warning("prompt of %d tokens cut from the left to the last %d", len(ids), room)
            ids = ids[-room:]
        return ids

    def stream(self, prompts: list[str], params: SamplingParams) -> Iterator[Event]:
        """Text increments of every prompt as they are decoded, batched; each row ends with a finish reason."""
        encoded = [self.encode_prompt(p, params) for p in prompts]
        limit = self.engine.steps_for(encoded, params)
        stop_ids = frozenset() if params.ignore_eos else frozenset({self.eot})
        rows = self.engine.rows(encoded, params, limit, decode=self.decode, stop_ids=stop_ids)
        for step in self.engine.steps(encoded, params, rows=rows):
            yield from (event for event in step if event is not None)

    @property
    def is_seq2seq(self) -> bool:
        return self.model.config.kind == "seq2seq"

    def translate(self, sources: list[str], params: SamplingParams, beam: BeamParams | None = None,
                  n: int = 1) -> list[list[str]]:
        """Outputs of the encoder-decoder for each source: ``beam.n_best`` texts with beam search, else ``n`` samples."""
        if any(not s.strip() for s in sources):
            raise GenerationError("a source text is empty; give something to translate")
        if n < 1:
            raise GenerationError(f"n must be at least 1, got {n}")
        room = self.engine.block_size - 1
        encoded = [self.tokenizer.encode(s, add_special_tokens=False).ids[:room] + [self.eot] for s in sources]
        if beam is None:
            encoded = [ids for ids in encoded for _ in range(n)]
        results = self.translate_ids(encoded, params, beam)
        texts = [[self.decode_target(h.tokens) for h in hypotheses] for hypotheses in results]
        if beam is None:
            texts = [sum(texts[i * n : (i + 1) * n], []) for i in range(len(sources))]
        return texts

    def translate_ids(self, sources: list[list[int]], params: SamplingParams, beam: BeamParams | None = None):
        """Engine translation of source ids (ending with the end token): hypotheses per source."""
        return self.engine.translate(sources, self.target_eot, self.target_eot, params, beam)

    def complete(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Whole completions of every prompt (the concatenation of :meth:`stream`)."""
        results = [Completion("", "length", 0, [], [] if params.logprobs else None) for _ in prompts]
        for event in self.stream(prompts, params):
            result = results[event.index]
            result.text += event.text
            if event.finish_reason != "stop":  # the token that stops is not part of the output
                result.token_ids.append(event.token)
                if result.logprobs is not None and event.logprob is not None:
                    result.logprobs.append(event.logprob)
            if event.finish_reason:
                result.finish_reason = event.finish_reason
        for prompt, result in zip(prompts, results):
            result.prompt_tokens = len(self.encode_prompt(prompt, params))
        return results
