"""Text on top of the engine: encode prompts, stream final text with stop strings, whole completions.

Streaming rows come from the decode core (:class:`~aigc.generate.decode.Row`), which holds text back
until it is final (:class:`~aigc.generate.stream.TextStream`), so streamed and whole outputs agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from aigc.chat_template import ChatTemplate
from aigc.checkpoint import Checkpoint, as_checkpoint
from aigc.errors import GenerationError
from aigc.generate.decode import Event
from aigc.generate.engine import DecoderEngine, Engine
from aigc.generate.grammar import Constraints
from aigc.generate.sampling import SamplingParams
from aigc.models.gpt import GPT
from aigc.tokenizer import eot_id

log = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None


class TextGenerator:
    """Prompts in, text out, for the decoder-only GPT: a tokenizer and the one decode core."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, eos_ids: Iterable[int] = (), chat: ChatTemplate | None = None,
                 engine: DecoderEngine | None = None):
        """``eos_ids``: the ids that end a sequence (an imported model's); default the tokenizer's <|endoftext|>.
        ``chat``: how a conversation becomes a prompt; default aigc's plain template. ``engine``: what computes
        the logits; default PyTorch's (:class:`Engine` of ``model``; ``model`` is then what that engine runs,
        e.g. a :class:`~aigc.generate.llamacpp.LlamaCppModel`)."""
        self.model, self.tokenizer = model, tokenizer
        self.engine = engine or Engine(model)
        self.eos_ids = frozenset(eos_ids) or frozenset({eot_id(tokenizer)})
        self.chat = chat or ChatTemplate()

    @classmethod
    def from_checkpoint(cls, source: Checkpoint | Path, device: str = "cpu", base: GPT | None = None) -> TextGenerator:
        """Load a checkpoint folder or a run directory (its latest checkpoint); a LoRA run's adapters go on
        ``base`` when given (sharing its weights with other adapters), else merged into a base of their own."""
        checkpoint = as_checkpoint(source)
        model = checkpoint.load_model(device, merge=base is None, base=base)
        return cls(model, Tokenizer.from_file(str(checkpoint.path / "tokenizer.json")),
                   checkpoint.config.model.eos_token_ids, ChatTemplate.from_checkpoint(checkpoint.path))

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    ) -> tuple[str, list[str]]:
        """A conversation as the text to continue (the run's chat template, offering ``tools``) and the stop strings
        it implies."""
        return self.chat.render(messages, add_generation_prompt=True, tools=tools), list(self.chat.stop)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

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

    @cached_property
    def constraints(self) -> Constraints:
        """Grammars over this tokenizer (built on first use: reading the vocabulary takes a moment)."""
        return Constraints(self.tokenizer, self.engine.vocab_size, self.eos_ids)

    def row_options(self, params: SamplingParams) -> dict[str, Any]:
        """What every decode-core row of ``params`` gets from this generator: text, stop ids, grammars."""
        return {"decode": self.decode, "stop_ids": frozenset() if params.ignore_eos else self.eos_ids,
                "constraints": self.constraints if params.grammar is not None else None}

    def stream(self, prompts: list[str], params: SamplingParams) -> Iterator[Event]:
        """Text increments of every prompt as they are decoded, batched; each row ends with a finish reason."""
        encoded = [self.encode_prompt(p, params) for p in prompts]
        limits = self.engine.steps_for(encoded, params)
        rows = self.engine.rows(encoded, params, limits, **self.row_options(params))
        for step in self.engine.steps(encoded, params, rows=rows):
            yield from (event for event in step if event is not None)

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
