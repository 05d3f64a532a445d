"""The settings of a text run: the built-in corpus of Python's standard library (``data``) and the code checks
of its evaluation (``eval``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig, Section


class TextData(DataConfig):
    kind: Literal["text"] = Field("text", description=KIND)
    builtin: list[Literal["stdlib"]] = Field(
        default_factory=list, description="built-in sources: stdlib = .py files of this Python's standard library")


class CodeEval(Section):
    """What text and chat runs share: whether the evaluation checks the samples as Python."""

    task: Literal["text", "code"] = Field("text", description="code: also check that samples are valid Python")


class TextEval(CodeEval):
    code_prompt: Literal["signature", "docstring"] = Field(
        "signature", description="code: what a held-out function's prompt holds: its signature, or its signature "
        "and docstring (HumanEval's prompts; functions without a short docstring are then skipped)")


SECTIONS = {"data": TextData, "eval": TextEval}
