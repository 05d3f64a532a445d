"""Conversations for supervised fine-tuning: read, render with the chat template, mark what the model learns.

Rows are JSONL in either common shape::

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}                   OpenAI / ShareGPT-as-messages
    {"instruction": "...", "input": "...", "output": "...", "system": "..."}  Alpaca ("input", "system" optional)

or the built-in ``stdlib_functions`` corpus (:mod:`aigc.tasks.chat.stdlib_functions`). A conversation is
rendered with the run's chat template (:class:`~aigc.chat_template.ChatTemplate`) into one token
sequence plus a loss mask that is 1 exactly on the assistant's tokens: the text each assistant turn adds
to the rendering (its content and the template's end-of-turn tokens), found by rendering the
conversation up to that turn with and without it. A row that cannot be used is counted in the prepare
report under its reason, with examples, and the rest go on.
"""

from __future__ import annotations

import functools
import json
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from aigc.chat_template import ChatTemplate, ChatTemplateError
from aigc.config import Config, DataConfig
from aigc.data.clean import CleaningReport
from aigc.data.prepare import PrepareResult
from aigc.data.sources import JSONL, SourceFile, json_objects
from aigc.tasks.chat.masked import SPLITS, MaskedSequences
from aigc.tasks.chat.stdlib_functions import FunctionExample, as_messages, functions_in

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class Conversation:
    """Messages (role/content), where they came from, and the key whose hash decides their split
    (the row itself, or for the built-in corpus its file: functions of one file share a split)."""

    messages: list[dict[str, str]]
    source: str
    key: str
    split: str | None = None


class Unusable(ValueError):
    """A conversation that cannot be trained on: ``reason`` is its row in the prepare report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def messages_of(row: Any) -> list[dict[str, str]]:
    """The messages of one JSONL row (either shape); :class:`Unusable` says why a row has none."""
    if not isinstance(row, dict):
        raise Unusable("malformed_row", f"a row is a JSON object, not {type(row).__name__}")
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise Unusable("malformed_message", "'messages' must be a non-empty list of {role, content} objects")
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                    or not isinstance(message.get("content"), str):
                raise Unusable("malformed_message", f"message {i} is not an object with string 'role' and 'content'")
            if message["role"] not in ROLES:
                raise Unusable("unknown_role", f"message {i} has role {message['role']!r}; known: {', '.join(ROLES)}")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif "instruction" in row and "output" in row:
        fields = {k: row.get(k) or "" for k in ("instruction", "input", "output", "system")}
        if not all(isinstance(v, str) for v in fields.values()):
            raise Unusable("malformed_message", "Alpaca fields instruction, input, output and system must be strings")
        prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        messages = [{"role": "system", "content": fields["system"]}] if fields["system"] else []
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": fields["output"]}]
    else:
        raise Unusable("malformed_row", "a row needs 'messages' (OpenAI) or 'instruction' and 'output' (Alpaca)")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise Unusable("no_assistant_turn", "no assistant message with text to learn from")
    return messages


def stdlib_examples(source: SourceFile, report: CleaningReport) -> list[FunctionExample]:
    """The documented functions of one standard-library file; an unreadable file is counted and gives none."""
    try:
        stat = source.path.stat()
        return list(_functions_of_file(source.path, stat.st_size, stat.st_mtime_ns))
    except (OSError, SyntaxError, UnicodeDecodeError) as err:
        report.drop("unreadable", source.label, 0, str(err))
        return []


@functools.lru_cache(maxsize=8192)
def _functions_of_file(path: Path, size: int, mtime_ns: int) -> tuple[FunctionExample, ...]:
    """``functions_in`` of the file at ``path`` as it is at (``size``, ``mtime_ns``): kept for the process, as
    `aigc run` reads the standard library (1,800 files, 12 s of parsing) in collect and again in prepare."""
    with tokenize.open(path) as handle:  # honours a file's coding cookie (PEP 263)
        return tuple(functions_in(handle.read()))


def read_conversations(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Conversation]:
    """The conversations of one file: JSONL rows, or the functions of a standard-library file."""
    if source.builtin == "stdlib_functions":
        for example in stdlib_examples(source, report):
            yield Conversation(as_messages(example), f"{source.label}:{example.line}", source.label, source.split)
        return
    suffix = source.path.suffix.lower()
    if suffix not in JSONL and suffix != ".json":
        report.drop("not_jsonl", source.label, source.path.stat().st_size,
                    "chat data is JSONL (.jsonl) or a JSON array (.json) of 'messages' or Alpaca rows")
        return
    rows = json_objects(source, report) if suffix in JSONL else _json_array(source, report)
    for row, where, size in rows:
        try:
            messages = messages_of(row)
        except Unusable as err:
            report.drop(err.reason, where, size, err.detail)
            continue
        yield Conversation(messages, where, json.dumps(messages, sort_keys=True), source.split)


def _json_array(source: SourceFile, report: CleaningReport) -> Iterator[tuple[Any, str, int]]:
    """The rows of a ``.json`` file holding one array (as Alpaca's ``alpaca_data.json``), like JSONL lines."""
    try:
        rows = json.loads(source.path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        report.drop("bad_json", source.label, source.path.stat().st_size, str(err))
        return
    if not isinstance(rows, list):
        report.drop("bad_json", source.label, source.path.stat().st_size, "a .json file of rows holds one JSON array")
        return
    for i, row in enumerate(rows):
        yield row, f"{source.label}[{i}]", len(json.dumps(row))


def encode_conversation(messages: list[dict[str, str]], template: ChatTemplate, tokenizer: Tokenizer,
                        eot: int, last_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (T,) and loss mask (T,) uint8 of one conversation: 1 on every assistant token (``last_only``: on
    the last message's, an assistant's, alone: a preference pair's answer after a conversation).

    With aigc's own template the conversation ends with ``eot`` (masked in when an assistant spoke last).
    :class:`Unusable` when the template refuses it or does not render earlier turns as a prefix.
    """
    try:
        text = template.render(messages, add_generation_prompt=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or (last_only and i != len(messages) - 1):
                continue
            before = template.render(messages[:i], add_generation_prompt=True)
            through = template.render(messages[: i + 1], add_generation_prompt=False)
            if not (through.startswith(before) and text.startswith(through)):
                raise Unusable("template_not_prefix", f"the chat template does not render turn {i} as a prefix of "
                               "the conversation, so its tokens cannot be found")
            spans.append((len(before), len(through)))
    except ChatTemplateError as err:
        raise Unusable("template_error", str(err)) from None
    encoding = tokenizer.encode(text, add_special_tokens=False)
    ids = np.asarray(encoding.ids, dtype=np.int64)
    starts = np.asarray([start for start, _ in encoding.offsets], dtype=np.int64)
    mask = np.zeros(len(ids), dtype=np.uint8)
    for start, end in spans:
        mask[(starts >= start) & (starts < end)] = 1
    if template.ends_with_eot:
        ids = np.append(ids, eot)
        mask = np.append(mask, np.uint8(messages[-1]["role"] == "assistant"))
    return ids, mask


def prepare_conversations(config: Config, settings: dict[str, Any]) -> PrepareResult:
    """Render, encode and shard conversations (:class:`~aigc.tasks.chat.masked.MaskedSequences`): each
    conversation's ids, its assistant-token mask and its length, so the sampler can pack them without crossing
    one; the val conversations' messages also go to ``val_conversations.jsonl`` for the evaluation's samples."""
    shards = MaskedSequences(config, "chat")
    for source in shards.sources:
        for conversation in read_conversations(source, config.data, shards.report):
            size = sum(len(m["content"]) for m in conversation.messages)
            try:
                encoded = encode_conversation(conversation.messages, shards.template, shards.tokenizer, shards.eot)
            except Unusable as err:
                shards.report.drop(err.reason, conversation.source, size, err.detail)
                continue
            shards.add([encoded], conversation.source, conversation.key, conversation.split, size,
                       conversation.messages)
    shards.close("the rows' fields ('messages', or 'instruction' and 'output')")
    return shards.write_manifest(settings, chat={"template": "model" if not shards.template.ends_with_eot else "aigc",
                                                 "assistant_tokens": {s: int(shards.mask(s).sum()) for s in SPLITS}})
