"""Tool calls on chat: the functions a request offers, shown to the model by its chat template, and its reply
read back as OpenAI's ``tool_calls``.

A model writes a call the way its template teaches it: between ``<tool_call>`` tags as
``{"name": ..., "arguments": {...}}`` (Hermes-style templates, Qwen2.5), or as a bare JSON object
``{"name": ..., "parameters": {...}}`` (Llama 3.1). With ``tool_choice: "required"`` or a named function
the reply is decoded under a grammar of exactly that form, with each function's parameters as the JSON
schema of its arguments, so the call is always valid; with ``auto`` the model may answer in words or call.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from aigc.chat_template import ChatTemplate
from aigc.generate.grammar import Grammar
from aigc.serve.schemas import ChatRequest, NamedToolChoice, Tool
from aigc.serve.workers import InvalidRequest

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: a fresh id, the function's name and its arguments as a JSON string (OpenAI's)."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolUse:
    """The tools of one chat request, for a model with ``template``."""

    tools: list[Tool]
    choice: str | NamedToolChoice
    tagged: bool  # calls between <tool_call> tags (else a bare JSON object)

    @classmethod
    def of(cls, body: ChatRequest, template: ChatTemplate | None) -> ToolUse | None:
        """The request's tool use; None when it offers none (or ``tool_choice: "none"``). A 400 for a template
        that takes no tools, or a choice naming a function the request does not offer."""
        choice = body.tool_choice or "auto"
        if not body.tools or choice == "none":
            if isinstance(choice, NamedToolChoice) or choice == "required":
                raise InvalidRequest("tool_choice asks for a call but no tools are given", "tool_choice")
            return None
        if template is None or not template.takes_tools:
            raise InvalidRequest("this model's chat template does not take tools (no function calling); send the "
                                 "request without tools", "tools", "tools_unsupported")
        names = [tool.function.name for tool in body.tools]
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequest(f"tool_choice names '{choice.function.name}', which is not among the tools "
                                 f"({', '.join(names)})", "tool_choice")
        return cls(body.tools, choice, template.tool_call_tags)

    @property
    def template_tools(self) -> list[dict[str, Any]]:
        """The tools as chat templates read them (``apply_chat_template(tools=...)``'s JSON-schema form)."""
        return [tool.model_dump(exclude_none=True) for tool in self.tools]

    def grammar(self) -> Grammar | None:
        """The form a call must take when one is required (``required`` or a named function); None for ``auto``."""
        if self.choice == "auto":
            return None
        offered = [t for t in self.tools if not isinstance(self.choice, NamedToolChoice)
                   or t.function.name == self.choice.function.name]
        key = "arguments" if self.tagged else "parameters"
        calls = [{"type": "object", "properties": {"name": {"const": t.function.name}, key: t.function.parameters},
                  "required": ["name", key], "additionalProperties": False} for t in offered]
        schema = {**(calls[0] if len(calls) == 1 else {"anyOf": calls}), "x-guidance": {"whitespace_flexible": False}}
        call = "%json " + json.dumps(schema)
        return Grammar("lark", f'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: {call}' if self.tagged
                       else f"start: {call}")

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """The reply's words (None when a call leaves none) and the calls it makes to offered functions."""
        names = {tool.function.name for tool in self.tools}
        if self.tagged:
            calls = [call for raw in _TAGGED.findall(text) if (call := _call(raw, names)) is not None]
            content = _TAGGED.sub("", text) if calls else text
        else:
            call = _call(text.strip(), names)
            calls, content = ([call], "") if call is not None else ([], text)
        return (content.strip() or None) if calls else content, calls


def _call(raw: str, names: set[str]) -> ToolCall | None:
    """A call of one of ``names`` from its JSON (``arguments`` or ``parameters``), or None when it is not one."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if not isinstance(arguments, dict):
        return None
    return ToolCall(f"call_{uuid.uuid4().hex[:24]}", data["name"], json.dumps(arguments, ensure_ascii=False))
