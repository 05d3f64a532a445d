"""The settings of a chat run: the built-in instruction corpus (``data``) and the code checks of its evaluation
(``eval``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig
from aigc.tasks.text.settings import CodeEval


class ChatData(DataConfig):
    kind: Literal["chat"] = Field("chat", description=KIND)
    builtin: list[Literal["stdlib_functions"]] = Field(
        default_factory=list, description="built-in sources: stdlib_functions = instruction pairs made from the "
        "standard library's documented functions, split by file")


class ChatEval(CodeEval):
    execute: bool = Field(False, description="code (stdlib_functions): also run the held-out functions' doctests "
                          "against the generated code (each in a sandboxed subprocess; opt in, it runs model-written "
                          "code)")


SECTIONS = {"data": ChatData, "eval": ChatEval}
