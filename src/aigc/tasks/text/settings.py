"""The ``data`` settings of a text run: the shared ones, and the built-in corpus of Python's standard library."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig


class TextData(DataConfig):
    kind: Literal["text"] = Field("text", description=KIND)
    builtin: list[Literal["stdlib"]] = Field(
        default_factory=list, description="built-in sources: stdlib = .py files of this Python's standard library")
