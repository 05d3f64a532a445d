"""The ``data`` settings of a chat run: the shared ones, and the built-in instruction corpus."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig


class ChatData(DataConfig):
    kind: Literal["chat"] = Field("chat", description=KIND)
    builtin: list[Literal["stdlib_functions"]] = Field(
        default_factory=list, description="built-in sources: stdlib_functions = instruction pairs made from the "
        "standard library's documented functions, split by file")
