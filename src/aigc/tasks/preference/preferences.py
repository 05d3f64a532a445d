"""Preference pairs: read, render, mark the answer tokens, shard.

Rows are JSONL in the two forms TRL documents for DPO and ORPO::

    {"prompt": "...", "chosen": "...", "rejected": "..."}                                  standard: text
    {"prompt": [{"role": "user", "content": "..."}],                                       conversational
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [{"role": "assistant", "content": "..."}]}

A standard pair is the prompt's text followed by each answer's, as written, then the end-of-text token; a
conversational one is the prompt's messages plus each answer rendered with the run's chat template (the
model's). Either way the loss mask is 1 on the answer's tokens alone (with the template's end-of-turn and the
end token): what DPO and ORPO score. Each pair is stored as two sequences, prompt + chosen then prompt +
rejected, with their lengths (two per pair), so a batch holds whole pairs.

The built-in ``stdlib_functions`` pairs: each documented standard-library function is the chosen answer to its
instruction, and a rewrite of it that no longer parses is the rejected one (:func:`unparsable_rewrite`); the
functions of one file share a split. A row that cannot be used is counted in the prepare report under its
reason (malformed_row, missing_field, malformed_message, identical_answers, template_error, too_long, ...), with
examples, and the rest go on.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from aigc.chat_template import ChatTemplate
from aigc.config import Config, DataConfig
from aigc.data.clean import CleaningReport
from aigc.data.prepare import PrepareResult
from aigc.data.sources import JSONL, SourceFile, json_objects
from aigc.tasks.chat.conversations import ROLES, Unusable, encode_conversation, stdlib_examples
from aigc.tasks.chat.masked import SPLITS, MaskedSequences
from aigc.tasks.chat.stdlib_functions import as_messages

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (text, or messages) and two answers to it (text, or one assistant message each), where the pair
    came from, and the key whose hash decides its split (the row, or for the built-in pairs their file)."""

    prompt: str | list[dict[str, str]]
    chosen: str | list[dict[str, str]]
    rejected: str | list[dict[str, str]]
    source: str
    key: str
    split: str | None = None

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise Unusable("malformed_message", f"'{field}' must be a non-empty list of {{role, content}} objects")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), str):
            raise Unusable("malformed_message",
                           f"{field} message {i} is not an object with string 'role' and 'content'")
        if message["role"] not in ROLES:
            raise Unusable("unknown_role",
                           f"{field} message {i} has role {message['role']!r}; known: {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def pair_of(row: Any, source: str, split: str | None) -> PreferencePair:
    """The pair of one JSONL row (either form); :class:`Unusable` says why a row has none."""
    if not isinstance(row, dict):
        raise Unusable("malformed_row", f"a row is a JSON object, not {type(row).__name__}")
    missing = [field for field in FIELDS if field not in row]
    if missing:
        raise Unusable("missing_field", f"a preference row needs 'prompt', 'chosen' and 'rejected'; this one has no "
                       f"{', '.join(repr(m) for m in missing)}")
    prompt, chosen, rejected = (row[field] for field in FIELDS)
    if all(isinstance(v, str) for v in (prompt, chosen, rejected)):
        if not chosen.strip() or not rejected.strip():
            raise Unusable("empty_answer", "'chosen' and 'rejected' must both hold text")
    elif all(isinstance(v, list) for v in (prompt, chosen, rejected)):
        prompt = _messages(prompt, "prompt")
        chosen, rejected = _messages(chosen, "chosen"), _messages(rejected, "rejected")
        for name, answer in (("chosen", chosen), ("rejected", rejected)):
            if len(answer) != 1 or answer[0]["role"] != "assistant" or not answer[0]["content"].strip():
                raise Unusable("malformed_message", f"'{name}' must be one assistant message with text")
    else:
        raise Unusable("mixed_forms", "'prompt', 'chosen' and 'rejected' are all strings (standard) or all lists of "
                       "messages (conversational)")
    if chosen == rejected:
        raise Unusable("identical_answers", "'chosen' and 'rejected' are the same: the pair prefers nothing")
    key = json.dumps([prompt, chosen, rejected], sort_keys=True)
    return PreferencePair(prompt, chosen, rejected, source, key, split)


def unparsable_rewrite(source: str, name: str) -> str | None:
    """A version of a function's ``source`` that Python cannot parse, or None if none of the rewrites breaks it.

    The rewrites, each changing one character so the pair differs only in whether the code is whole (not in its
    length, which DPO would learn instead), tried in an order fixed by the function's name: drop the last closing
    bracket; drop the colon that ends the ``def`` line; indent the last line by one more space."""
    lines = source.splitlines(keepends=True)
    def_line = next((i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "async def"))), 0)
    closing = max(source.rfind(")"), source.rfind("]"), source.rfind("}"))
    header = lines[def_line].rstrip("\r\n")
    rewrites = [
        source[:closing] + source[closing + 1 :] if closing >= 0 else source,
        "".join([*lines[:def_line], header.removesuffix(":") + lines[def_line][len(header):], *lines[def_line + 1 :]])
        if header.endswith(":") else source,
        "".join([*lines[:-1], " " + lines[-1]]) if len(lines) > 1 else source,
    ]
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(rewrites)
    for rewrite in rewrites[start:] + rewrites[:start]:
        try:
            ast.parse(rewrite)
        except (SyntaxError, ValueError):
            return rewrite
    return None


def read_pairs(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[PreferencePair]:
    """The pairs of one file: JSONL rows, or the functions of a standard-library file with unparsable rewrites."""
    if source.builtin == "stdlib_functions":
        for example in stdlib_examples(source, report):
            rejected = unparsable_rewrite(example.source, example.name)
            where = f"{source.label}:{example.line}"
            if rejected is None:
                report.drop("no_rejected_answer", where, len(example.source), "no rewrite of it fails to parse")
                continue
            user, assistant = as_messages(example)
            yield PreferencePair([user], [assistant], [{"role": "assistant", "content": rejected}], where,
                                 source.label, source.split)
        return
    if source.path.suffix.lower() not in JSONL:
        report.drop("not_jsonl", source.label, source.path.stat().st_size,
                    "preference data is JSONL (.jsonl): rows of 'prompt', 'chosen' and 'rejected'")
        return
    for row, where, size in json_objects(source, report):
        try:
            yield pair_of(row, where, source.split)
        except Unusable as err:
            report.drop(err.reason, where, size, err.detail)


def encode_answer(pair: PreferencePair, answer: str | list[dict[str, str]], template: ChatTemplate,
                  tokenizer: Tokenizer, eot: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (T,) of the prompt followed by ``answer``, and the loss mask (T,) uint8: 1 on the answer's tokens."""
    if pair.conversational:
        return encode_conversation([*pair.prompt, *answer], template, tokenizer, eot, last_only=True)
    encoding = tokenizer.encode(pair.prompt + answer, add_special_tokens=False)
    starts = np.asarray([start for start, _ in encoding.offsets], dtype=np.int64)
    ids = np.append(np.asarray(encoding.ids, dtype=np.int64), eot)
    mask = np.append((starts >= len(pair.prompt)).astype(np.uint8), np.uint8(1))
    return ids, mask


SAMPLE_BATCH = 32  # prompts answered at once when the built-in pairs' rejected answers are sampled


def sampled_rejections(pairs: list[PreferencePair], config: Config) -> list[PreferencePair]:
    """The built-in ``pairs`` with ``model.init``'s own answer as the rejected one wherever that answer's code does not
    parse (``data.rejected=sampled``): what the model gets wrong, in its own words. Sampled with the run's
    ``generate`` settings and seed; a pair whose sampled answer parses keeps its rewrite."""
    from aigc.checkpoint import load_checkpoint
    from aigc.code_checks import compiles, defines_function, extract_code
    from aigc.generate.sampling import sampling_params
    from aigc.generate.text import TextGenerator

    generator = TextGenerator.from_checkpoint(load_checkpoint(config.model.init))
    resampled = []
    for first in range(0, len(pairs), SAMPLE_BATCH):
        batch = pairs[first : first + SAMPLE_BATCH]
        prompts = [generator.chat_prompt(pair.prompt) for pair in batch]
        params = sampling_params(config.generate, seed=config.seed + first,
                                 stop=tuple(config.generate.stop) + tuple(prompts[0][1]))
        for pair, completion in zip(batch, generator.complete([text for text, _ in prompts], params)):
            answer = completion.text.strip()  # the template's space after "Assistant:" is not the answer's
            code = extract_code(answer)
            rejected = [{"role": "assistant", "content": answer}]
            if answer and not (defines_function(code) and compiles(code)) and rejected != pair.chosen:
                pair = dataclasses.replace(pair, rejected=rejected)
            resampled.append(pair)
    return resampled


def _fits(pair: PreferencePair, shards: MaskedSequences, seq_len: int) -> bool:
    """Whether the pair's prompt and chosen answer fit the training length (one that cannot be encoded does not)."""
    try:
        return len(encode_answer(pair, pair.chosen, shards.template, shards.tokenizer, shards.eot)[0]) <= seq_len
    except Unusable:
        return False


def prepare_preferences(config: Config, settings: dict[str, Any]) -> PrepareResult:
    """Encode and shard preference pairs (:class:`~aigc.tasks.chat.masked.MaskedSequences`): each pair's two
    sequences (prompt + chosen, prompt + rejected) with their answer masks, in one split; the val pairs' prompts
    with their chosen answers also go to ``val_conversations.jsonl`` (the evaluation's samples)."""
    shards = MaskedSequences(config, "preference")
    for source in shards.sources:
        pairs: Iterable[PreferencePair] = read_pairs(source, config.data, shards.report)
        if source.builtin and config.data.rejected == "sampled":  # only pairs whose chosen answer fits are sampled
            pairs = list(pairs)
            fits = [_fits(pair, shards, config.seq_len) for pair in pairs]
            sampled = iter(sampled_rejections([pair for pair, fit in zip(pairs, fits) if fit], config))
            pairs = [next(sampled) if fit else pair for pair, fit in zip(pairs, fits)]
        for pair in pairs:
            size = len(json.dumps([pair.prompt, pair.chosen, pair.rejected]))
            try:
                encoded = [encode_answer(pair, answer, shards.template, shards.tokenizer, shards.eot)
                           for answer in (pair.chosen, pair.rejected)]
            except Unusable as err:
                shards.report.drop(err.reason, pair.source, size, err.detail)
                continue
            shards.add(encoded, pair.source, pair.key, pair.split, size,
                       [*pair.prompt, *pair.chosen] if pair.conversational else None)
    shards.close("the rows' fields ('prompt', 'chosen' and 'rejected')")
    pairs = {split: shards.splits[f"{split}.lengths"]["tokens"] // 2 for split in SPLITS}
    return shards.write_manifest(settings, preference={"pairs": pairs})
