"""Text on top of the engine: encode prompts, stream decoded text safely, stop strings, completions.

Streaming decodes each row's generated ids and emits only text that is final:

- never half a character: byte-level BPE can end a step in the middle of a multi-byte UTF-8 character,
  which decodes to U+FFFD; such a tail is held until the next token completes it;
- never part of a stop string: a tail that could still grow into a stop string is held until it
  either does (then it is cut, and the stop text is never emitted) or cannot any more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenizers import Tokenizer

from aigc.checkpoint import load_checkpoint
from aigc.errors import GenerationError
from aigc.generate.engine import DecodeState, Engine
from aigc.generate.sampling import SamplingParams
from aigc.generate.beam import BeamParams
from aigc.models import build_model
from aigc.models.gpt import GPT
from aigc.models.seq2seq import Seq2Seq
from aigc.tokenizer import TARGET_TOKENIZER, eot_id

log = logging.getLogger(__name__)
REPLACEMENT = "\ufffd"


def _held_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """Incremental detokenizer for one sequence, with stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...] = ()):
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.emitted = 0  # characters of the final text already handed out
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one generated id; return the text that became final (possibly empty)."""
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith(REPLACEMENT):
            return ""
        self.text = text
        start = max(0, self.emitted - max((len(s) for s in self.stops), default=0))
        cuts = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            self.text = text[: min(cuts)]
            return self._emit(len(self.text))
        return self._emit(len(text) - _held_length(text, self.stops))

    def finish(self) -> str:
        """The generation ended: release whatever is still held."""
        if not self.stopped:
            self.text = self.decode(self.ids)
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece


@dataclass
class Piece:
    """One streamed increment of row ``index``; the last one of a row carries its ``finish_reason``."""

    index: int
    text: str
    token: int | None = None
    logprob: float | None = None
    finish_reason: str | None = None


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

    def stream(self, prompts: list[str], params: SamplingParams) -> Iterator[Piece]:
        """Text increments of every prompt as they are decoded, batched; each row ends with a finish reason."""
        encoded = [self.encode_prompt(p, params) for p in prompts]
        streams = [TextStream(self.decode, params.stop) for _ in prompts]
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else {self.eot})
        state = DecodeState()
        for step in self.engine.steps(encoded, params, state):
            for row, item in enumerate(step):
                if item is None:
                    continue
                if item.token in stop_ids:
                    state.finished[row] = True
                    yield Piece(row, streams[row].finish(), item.token, item.logprob, "stop")
                    continue
                text = streams[row].add(item.token)
                if streams[row].stopped:
                    state.finished[row] = True
                    yield Piece(row, text, item.token, item.logprob, "stop")
                else:
                    yield Piece(row, text, item.token, item.logprob)
        for row, finished in enumerate(state.finished):
            if not finished:
                yield Piece(row, streams[row].finish(), finish_reason="length")

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
        for piece in self.stream(prompts, params):
            result = results[piece.index]
            result.text += piece.text
            if piece.token is not None and piece.finish_reason is None:
                result.token_ids.append(piece.token)
                if result.logprobs is not None and piece.logprob is not None:
                    result.logprobs.append(piece.logprob)
            if piece.finish_reason:
                result.finish_reason = piece.finish_reason
        for prompt, result in zip(prompts, results):
            result.prompt_tokens = len(self.encode_prompt(prompt, params))
        return results
