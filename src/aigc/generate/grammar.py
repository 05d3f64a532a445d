"""Constrained decoding: what a row may write (a JSON schema, a regex, a list of choices, a Lark grammar) as a
mask over the next token's logits, computed by llguidance.

llguidance (the engine behind vLLM's and llama.cpp's structured outputs) was chosen over xgrammar and
outlines-core: its masks cost tens of microseconds per token on our vocabularies without an ahead-of-time
compile of the whole vocabulary (``benchmarks/serve.py`` prints the cost), it takes JSON schemas, regexes and
Lark grammars through one API, it reads a ``tokenizers`` JSON directly, and its wheel carries no torch or
transformers dependency.

A :class:`Grammar` is part of a request's :class:`~aigc.generate.sampling.SamplingParams`; a
:class:`Constraints` (one per tokenizer) checks it up front (:class:`GrammarError` names what the library
refuses) and gives each decode-core row its own :class:`GrammarMatcher`.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import llguidance
import numpy as np
import torch
from tokenizers import Tokenizer, models

from aigc.errors import GenerationError

GrammarKind = Literal["json_schema", "regex", "choice", "lark"]
COMPILED_KEPT = 64  # grammars kept compiled per tokenizer


class GrammarError(GenerationError):
    """A grammar the library cannot use: an invalid or unsupported schema, a bad regex or Lark grammar."""


@dataclass(frozen=True)
class Grammar:
    """What a row's output must match. ``source``: the JSON schema as JSON text, the regex, the choices as a JSON
    list, or the Lark grammar."""

    kind: GrammarKind
    source: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> Grammar:
        return cls("json_schema", json.dumps(schema, sort_keys=True))

    @classmethod
    def choice(cls, choices: list[str]) -> Grammar:
        if not choices or any(not isinstance(c, str) or not c for c in choices):
            raise GrammarError("choice needs a list of non-empty strings")
        return cls("choice", json.dumps(choices))

    def llguidance(self) -> str:
        """The grammar in llguidance's own form."""
        if self.kind == "json_schema":  # compact, as OpenAI's: whitespace is where a small model wanders off
            try:
                return llguidance.LLMatcher.grammar_from_json_schema(self.source,
                                                                     defaults={"whitespace_flexible": False})
            except ValueError as err:
                raise GrammarError(f"the JSON schema is not valid: {err}") from None
        if self.kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(self.source)
        if self.kind == "choice":  # one Lark alternative per choice; JSON string escapes are Lark's too
            return llguidance.LLMatcher.grammar_from_lark(
                "start: " + " | ".join(json.dumps(c) for c in json.loads(self.source)))
        return llguidance.LLMatcher.grammar_from_lark(self.source)


class GrammarMatcher:
    """One row's place in its grammar: the mask of the tokens that may come next, and the tokens taken."""

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int):
        self.matcher, self.vocab_size = matcher, vocab_size

    def blocked(self) -> torch.Tensor | None:
        """Which of the model's ``vocab_size`` tokens may not come next, bool (V,); None when none may (the
        vocabulary cannot continue the grammar). Made in numpy: a few small torch operations would cost more
        than llguidance's mask itself."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        if not bits.any():
            return None
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.vocab_size] == 0)

    def take(self, token: int) -> bool:
        """Move past ``token``; False when the grammar cannot take it (no token of the vocabulary could: the
        tokenizer lacks a character the grammar needs)."""
        return self.matcher.consume_token(token)

    @property
    def complete(self) -> bool:
        """Whether the grammar is finished: nothing but the end of text may follow."""
        return self.matcher.is_stopped()


class Constraints:
    """Grammars over one tokenizer, for a model of ``vocab_size`` logits (ids past the tokenizer's are never
    allowed) whose text ends with ``eos_ids``."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, eos_ids: frozenset[int]):
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(_llguidance_tokenizer(tokenizer, eos_ids), n_vocab=vocab_size,
                                                eos_token=sorted(eos_ids))
        self._compiled: OrderedDict[Grammar, llguidance.LLMatcher] = OrderedDict()  # the last COMPILED_KEPT used
        self._lock = threading.Lock()  # handlers check grammars on worker threads, the scheduler copies them

    def _compile(self, grammar: Grammar) -> llguidance.LLMatcher:
        """A matcher of ``grammar`` at its start, compiled once and kept (rows copy it: a copy costs nothing, a
        large schema's compile a noticeable time on the thread that decodes every row)."""
        with self._lock:
            matcher = self._compiled.get(grammar)
            if matcher is not None:
                self._compiled.move_to_end(grammar)
                return matcher
        matcher = llguidance.LLMatcher(self.tokenizer, grammar.llguidance(), log_level=0)
        if matcher.is_error():
            raise GrammarError(f"the {grammar.kind.replace('_', ' ')} cannot be used: {matcher.get_error()}")
        with self._lock:
            self._compiled[grammar] = matcher
            while len(self._compiled) > COMPILED_KEPT:
                self._compiled.popitem(last=False)
        return matcher

    def check(self, grammar: Grammar) -> None:
        """Raise :class:`GrammarError` for a grammar the library refuses (before any row starts)."""
        self._compile(grammar)

    def matcher(self, grammar: Grammar) -> GrammarMatcher:
        """A fresh matcher of ``grammar`` for one row."""
        return GrammarMatcher(self._compile(grammar).deep_copy(), self.vocab_size)


class _TokenBytes:
    """The form llguidance takes a vocabulary in when it cannot read the tokenizer's decoder (a character
    vocabulary: each token is its own text, special tokens marked)."""

    def __init__(self, tokenizer: Tokenizer, eos_ids: frozenset[int]):
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.special_token_ids = sorted(token for token, added in tokenizer.get_added_tokens_decoder().items()
                                        if added.special)
        self.tokens = [b""] * (max(vocab.values()) + 1)
        for text, token in vocab.items():  # a special token's bytes start with 0xff, which no text has
            self.tokens[token] = (b"\xff" if token in self.special_token_ids else b"") + text.encode("utf-8")
        self.eos_token_id, self.bos_token_id = min(eos_ids), None
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids


def _llguidance_tokenizer(tokenizer: Tokenizer, eos_ids: frozenset[int]) -> str | llguidance.TokenizerWrapper:
    """A byte-level BPE or SentencePiece tokenizer as its JSON (llguidance reads its decoder); a character
    vocabulary (a WordLevel model: whole characters, no byte decoder) as its tokens' bytes."""
    if isinstance(tokenizer.model, models.WordLevel):
        return llguidance.TokenizerWrapper(_TokenBytes(tokenizer, eos_ids))
    return tokenizer.to_str()
