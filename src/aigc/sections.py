"""What every config section is built on, and the ``data`` settings that every kind of run shares.

Each kind of run adds its own ``data`` settings in its package (``aigc.tasks.<kind>.settings``); the
``data`` section of a :class:`~aigc.config.Config` is the one of the kind ``data.kind`` names.
Only pydantic here: :mod:`aigc.config` and the kinds' settings import it without importing each other.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

KIND = ("the kind of run, which decides the other data.* settings (aigc.tasks.registry): text = documents for a GPT, "
        "chat = conversations (OpenAI messages or Alpaca JSONL) for fine-tuning a GPT on its assistant turns, pairs = "
        "source/target pairs for seq2seq, images = captioned images, speech = spoken clips with their text")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """Where a run's records come from and which are kept: the settings of every kind of run."""

    kind: str = Field("text", description=KIND)
    paths: list[str] = Field(default_factory=list, description="files, folders (recursive) and glob patterns to read")
    builtin: list[str] = Field(default_factory=list, description="built-in sources (each kind lists its own)")
    exclude: list[str] = Field(
        default_factory=list, description="glob patterns of files to leave out, matched against each file's full path "
        "(* crosses folders): e.g. ['*/test/*', '*/tests/*'] drops test suites from data.paths folders and stdlib"
    )
    field: str = Field("text", description="JSONL field that holds the text")
    column: str = Field("text", description="CSV/TSV column that holds the text")
    document: Literal["file", "paragraph", "line"] = Field(
        "file", description="what one document is in plain-text files: a whole file, a blank-line paragraph, a line"
    )
    min_chars: int = Field(1, ge=1, description="drop documents shorter than this (characters, after cleaning)")
    max_chars: int = Field(10_000_000, ge=1, description="drop documents longer than this (characters)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of documents held out for validation")
    val_paths: list[str] = Field(
        default_factory=list, description="files, folders or globs that are the val split (then val_fraction is unused)"
    )

    @model_validator(mode="after")
    def _lengths_ordered(self) -> DataConfig:
        if self.min_chars > self.max_chars:
            raise ValueError(f"data.min_chars ({self.min_chars}) is above data.max_chars ({self.max_chars})")
        return self


class TestSplit(Section):
    """For kinds that also hold out a test split (scored once, by the evaluation)."""

    test_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share held out as the test split")
