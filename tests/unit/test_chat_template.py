"""Chat templates: aigc's default text, the variables and helpers a model's own template gets (as transformers'
apply_chat_template gives them), the errors a user sees, and the template a checkpoint carries."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from aigc import chat_template
from aigc.chat_template import CHAT_FILE, ChatTemplate, ChatTemplateError

MESSAGES = [{"role": "system", "content": "be short"}, {"role": "developer", "content": "no emoji"},
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]


def test_default_template_writes_one_role_line_per_message() -> None:
    """system and developer are "System", other roles capitalised; the generation prompt adds "Assistant:"."""
    body = "System: be short\nSystem: no emoji\nUser: hi\nAssistant: yo\n"
    assert ChatTemplate().render(MESSAGES) == body + "Assistant:"
    assert ChatTemplate().render(MESSAGES, add_generation_prompt=False) == body


def test_special_tokens_and_the_empty_tool_variables() -> None:
    """The template's special-token strings are variables; ``tools`` and ``documents`` are defined and None."""
    template = ChatTemplate("{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}"
                            "{{ tools is none and documents is none }}", {"bos_token": "<s>", "eos_token": "</s>"})
    assert template.render([{"role": "user", "content": "hi"}]) == "<s>hi</s>True"


def test_none_values_are_dropped_and_tojson_keeps_html_and_unicode() -> None:
    """A key whose value is None is not in the message the template sees, and ``tojson`` writes "<", ">", "&"
    and non-ASCII characters as they are (Jinja's own filter would escape them)."""
    template = ChatTemplate("{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=1) }}")
    rendered = template.render([{"role": "user", "content": "<b>café</b> & co", "name": None}])
    compact = '{"role": "user", "content": "<b>café</b> & co"}'
    assert rendered == compact + "|" + json.dumps(json.loads(compact), ensure_ascii=False, indent=1)


def test_blocks_trim_and_loop_controls_work() -> None:
    """``trim_blocks`` / ``lstrip_blocks`` drop the newline after a block tag and the indent before it, ``break``
    works, and ``{% generation %}`` renders its body unchanged."""
    template = ChatTemplate("{% for m in messages %}\n"
                            "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
                            "{% generation %}{{ m['content'] }};{% endgeneration %}\n"
                            "{% endfor %}\n")
    assert template.render(MESSAGES) == "be short;no emoji;"


def test_namespace_assignment_and_its_underscore_guard() -> None:
    """``namespace()`` carries a value out of a loop; a name starting with "_" is refused, at creation or assignment."""
    found = ChatTemplate("{% set ns = namespace(last='') %}{% for m in messages %}{% set ns.last = m['role'] %}"
                         "{% endfor %}{{ ns.last }}")
    assert found.render(MESSAGES) == "assistant"
    for source in ("{% set ns = namespace(_x=1) %}", "{% set ns = namespace() %}{% set ns._x = 1 %}"):
        with pytest.raises(ChatTemplateError, match="cannot set '_x' on a namespace"):
            ChatTemplate(source).render(MESSAGES)


def test_strftime_now_formats_the_current_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """``strftime_now(format)`` formats the time of rendering (here a fixed one)."""

    class Fixed(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 7, 1, 9, 30)

    monkeypatch.setattr(chat_template, "datetime", Fixed)
    assert ChatTemplate("{{ strftime_now('%d %b %Y') }}").render([]) == "01 Jul 2024"


def test_a_template_that_raises_or_is_not_jinja_says_why() -> None:
    """``raise_exception`` becomes a ChatTemplateError with the template's message; a syntax error names its line."""
    refusing = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}")
    with pytest.raises(ChatTemplateError, match="^the chat template refused the conversation: user first$"):
        refusing.render(MESSAGES)
    with pytest.raises(ChatTemplateError, match=r"^the chat template is not valid Jinja \(line 2: "):
        ChatTemplate("ok\n{% if %}").render(MESSAGES)


def test_a_checkpoint_without_chat_json_gets_the_default(tmp_path: Path) -> None:
    """No ``chat.json``: aigc's own template, its "User:" stop string, and <|endoftext|> after a conversation."""
    template = ChatTemplate.from_checkpoint(tmp_path)
    assert template == ChatTemplate()
    assert (template.stop, template.ends_with_eot, template.tokens) == (("\nUser:",), True, {})


def test_a_checkpoints_own_template_round_trips_through_chat_json(tmp_path: Path) -> None:
    """``to_json`` writes the source and tokens; ``from_checkpoint`` reads them back, with no stop strings of
    aigc's and no <|endoftext|> appended (the model's template closes its own turns)."""
    saved = ChatTemplate("{{ bos_token }}{% for m in messages %}[{{ m['content'] }}]{% endfor %}",
                         {"bos_token": "<s>"}, (), ends_with_eot=False)
    (tmp_path / CHAT_FILE).write_text(json.dumps(saved.to_json()), encoding="utf-8")
    assert saved.to_json() == {"template": saved.source, "tokens": {"bos_token": "<s>"}}
    loaded = ChatTemplate.from_checkpoint(tmp_path)
    assert loaded == saved
    assert loaded.render(MESSAGES[2:]) == "<s>[hi][yo]"


def test_chat_json_without_tokens_means_none(tmp_path: Path) -> None:
    """A ``chat.json`` with only a template reads as a template with no special-token strings."""
    (tmp_path / CHAT_FILE).write_text(json.dumps({"template": "{{ messages | length }}"}), encoding="utf-8")
    loaded = ChatTemplate.from_checkpoint(tmp_path)
    assert (loaded.tokens, loaded.stop, loaded.ends_with_eot) == ({}, (), False)
    assert loaded.render(MESSAGES) == "4"
