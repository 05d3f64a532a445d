"""Chat templates: a conversation (role/content messages) -> the text a model continues.

A run's template is the one it was imported with (``chat.json`` in the checkpoint: the Jinja source
from the model's ``tokenizer_config.json`` / ``chat_template.jinja`` and the special-token strings it
may use), rendered exactly as ``transformers``' ``apply_chat_template`` renders it: Jinja2's
immutable sandbox with ``trim_blocks`` and ``lstrip_blocks``, the loop-control extension, the helpers
``raise_exception`` and ``strftime_now``, a ``tojson`` that does not escape HTML, and the variables
``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` (and the other special tokens).

aigc's own runs have no template of their own and get :data:`DEFAULT_TEMPLATE`: one ``Role: text``
line per message (``system`` and ``developer`` are ``System``), then ``Assistant:``; the reply stops
at a new ``User:`` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from aigc.errors import GenerationError
from aigc.files import read_json

CHAT_FILE = "chat.json"  # in a run or checkpoint folder: {"template": ..., "tokens": {"bos_token": ..., ...}}


DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ 'System' if message['role'] in ['system', 'developer'] else message['role'] | capitalize }}: "
    "{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOP = ("\nUser:",)


class ChatTemplateError(GenerationError):
    """The template could not render this conversation (it raised, or it is not valid Jinja)."""


@lru_cache(maxsize=16)
def _compile(source: str):
    """The template compiled in the same environment as ``transformers``' ``_compile_jinja_template``."""
    import jinja2

    try:
        return _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as err:
        raise ChatTemplateError(f"the chat template is not valid Jinja (line {err.lineno}: {err.message})") from None


@lru_cache(maxsize=1)
def _environment():
    """The Jinja environment of ``transformers``' ``_compile_jinja_template``."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        import jinja2.utils
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise GenerationError("chat templates need the jinja2 package: pip install jinja2") from None

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` marks the assistant's text for training masks; here it
        renders its body unchanged, as apply_chat_template does when it does not track them."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        """Jinja's namespace without underscore-prefixed attributes (as transformers' sandbox has it)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set {name!r} on a namespace")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["namespace"] = Namespace
    return env


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template, the special-token strings it may read, and stop strings it implies."""

    source: str = DEFAULT_TEMPLATE
    tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, unk_token, pad_token
    stop: tuple[str, ...] = DEFAULT_STOP
    # a rendered conversation is one document: aigc's template ends it with <|endoftext|> (which a fine-tuned
    # model learns to say after its answer); a model's own template closes turns with its own tokens
    ends_with_eot: bool = True

    @classmethod
    def from_checkpoint(cls, folder: Path) -> ChatTemplate:
        """The checkpoint's own template (``chat.json``), else aigc's default."""
        file = folder / CHAT_FILE
        if not file.is_file():
            return cls()
        saved = read_json(file)
        return cls(saved["template"], dict(saved.get("tokens", {})), (), ends_with_eot=False)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
               tools: list[dict[str, Any]] | None = None) -> str:
        """The conversation as text to continue; :class:`ChatTemplateError` when the template refuses it.
        ``tools``: the functions the model may call (OpenAI's ``tools`` entries), for a template that takes them."""
        import jinja2

        template = _compile(self.source)
        # like apply_chat_template: keys whose value is None are dropped; the special tokens are variables
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools or None,
                                   documents=None, **self.tokens)
        except jinja2.exceptions.TemplateError as err:
            raise ChatTemplateError(f"the chat template refused the conversation: {err}") from None

    @property
    def takes_tools(self) -> bool:
        """Whether the template reads ``tools`` (Qwen2.5, Llama 3.1+, Mistral and Hermes-style templates do)."""
        import jinja2.meta

        _compile(self.source)  # a template that is not valid Jinja says so
        return "tools" in jinja2.meta.find_undeclared_variables(_environment().parse(self.source))

    @property
    def tool_call_tags(self) -> bool:
        """Whether the model writes a call between ``<tool_call>`` tags (Hermes and Qwen2.5 templates say so), rather
        than as a bare JSON object (Llama 3.1's)."""
        return "<tool_call>" in self.source

    def to_json(self) -> dict[str, Any]:
        return {"template": self.source, "tokens": self.tokens}
