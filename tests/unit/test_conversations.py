"""Conversations for SFT: the row shapes, the bad rows and their reasons, and the assistant-only loss mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigc.chat_template import ChatTemplate
from aigc.config import DataConfig
from aigc.data.clean import CleaningReport
from aigc.tasks.chat.conversations import Unusable, encode_conversation, messages_of, read_conversations
from aigc.data.sources import SourceFile
from aigc.tokenizer import train_char
from tests.parity import tiny_hf

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_the_mask_covers_exactly_the_assistant_tokens_hand_computed():
    tokenizer = train_char(["User: hi\nAssistant: yo\n"], 64)
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids, mask = encode_conversation(CHAT, ChatTemplate(), tokenizer, eot)
    # "User: hi\nAssistant:" is 19 characters (one token each) of prompt, then " yo\n" and <|endoftext|> are learnt
    assert tokenizer.decode(ids[:19].tolist()) == "User: hi\nAssistant:"
    assert mask.tolist() == [0] * 19 + [1, 1, 1, 1] + [1]
    assert ids[-1] == eot and len(ids) == 24


def test_every_assistant_turn_is_learnt_and_nothing_else():
    messages = [{"role": "system", "content": "be short"}, {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"}]
    tokenizer = train_char(["System: be short\nUser: a c\nAssistant: b d\n"], 64)
    ids, mask = encode_conversation(messages, ChatTemplate(), tokenizer, 0)
    learnt = "".join(tokenizer.decode([int(i)]) if i else "<eot>" for i, m in zip(ids, mask) if m)
    assert learnt == " b\n d\n<eot>"


def test_a_models_own_template_learns_its_end_of_turn_token():
    fast = tiny_hf.tokenizer("chatml")
    template = ChatTemplate(tiny_hf.CHATML, {}, (), ends_with_eot=False)
    messages = [{"role": "user", "content": "the king"}, {"role": "assistant", "content": "the queen"},
                {"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    ids, mask = encode_conversation(messages, template, fast.backend_tokenizer, 0)
    assert fast.decode(ids.tolist()) == template.render(messages, add_generation_prompt=False)
    runs, current = [], []
    for token, learn in zip(ids.tolist(), mask.tolist()):
        if learn:
            current.append(token)
        elif current:
            runs.append(fast.decode(current))
            current = []
    runs.append(fast.decode(current)) if current else None
    assert runs == ["the queen<|im_end|>\n", "world<|im_end|>\n"]


def test_a_template_that_rewrites_earlier_turns_is_refused():
    template = ChatTemplate("{% for m in messages %}{{ m['content'] }}{% if loop.last %}!{% endif %}{% endfor %}",
                            {}, (), ends_with_eot=False)
    tokenizer = train_char(["hiyo!"], 64)
    messages = [*CHAT, {"role": "user", "content": "more"}]
    with pytest.raises(Unusable) as caught:
        encode_conversation(messages, template, tokenizer, 0)
    assert caught.value.reason == "template_not_prefix"


@pytest.mark.parametrize(("row", "expected"), [
    ({"messages": CHAT}, CHAT),
    ({"instruction": "add", "input": "1 2", "output": "3"},
     [{"role": "user", "content": "add\n\n1 2"}, {"role": "assistant", "content": "3"}]),
    ({"instruction": "add", "output": "3", "system": "math"},
     [{"role": "system", "content": "math"}, {"role": "user", "content": "add"}, {"role": "assistant", "content": "3"}]),
])
def test_openai_and_alpaca_rows(row, expected):
    assert messages_of(row) == expected


@pytest.mark.parametrize(("row", "reason"), [
    ([1, 2], "malformed_row"),
    ({"text": "hello"}, "malformed_row"),
    ({"messages": []}, "malformed_message"),
    ({"messages": [{"role": "user"}]}, "malformed_message"),
    ({"messages": [{"role": "user", "content": 5}]}, "malformed_message"),
    ({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no_assistant_turn"),
    ({"instruction": 5, "output": "x"}, "malformed_message"),
    ({"instruction": "say nothing", "output": ""}, "no_assistant_turn"),
    ({"instruction": "say nothing", "output": None}, "no_assistant_turn"),
])
def test_bad_rows_say_why(row, reason):
    with pytest.raises(Unusable) as caught:
        messages_of(row)
    assert caught.value.reason == reason


def test_a_file_with_bad_rows_keeps_the_good_ones_and_counts_the_rest(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [json.dumps({"messages": CHAT}), "{not json", json.dumps({"messages": [{"role": "user", "content": "x"}]}),
            json.dumps({"instruction": "a", "output": "b"}), json.dumps({"messages": [{"role": "bot", "content": "x"}]})]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = CleaningReport()
    found = list(read_conversations(SourceFile(path), DataConfig(), report))
    assert [c.source for c in found] == [f"{path}:1", f"{path}:4"]
    assert {reason: tally.count for reason, tally in report.dropped.items()} == {
        "bad_json": 1, "no_assistant_turn": 1, "unknown_role": 1}
    assert report.dropped["unknown_role"].examples == [f"{path}:5: message 0 has role 'bot'; known: system, developer, "
                                                       "user, assistant"]
    assert np.unique([c.key for c in found]).size == 2


def test_a_json_array_file_is_read_row_by_row(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"text": "no"}]), encoding="utf-8")
    report = CleaningReport()
    found = list(read_conversations(SourceFile(path), DataConfig(), report))
    assert [c.source for c in found] == [f"{path}[0]"] and report.dropped["malformed_row"].count == 1
    (tmp_path / "object.json").write_text("{}", encoding="utf-8")
    assert not list(read_conversations(SourceFile(tmp_path / "object.json"), DataConfig(), report))
    assert report.dropped["bad_json"].count == 1
