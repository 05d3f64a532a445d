"""The ``data`` settings of a translation run: where each side of a pair is, and which way to translate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig, TestSplit


class PairsData(TestSplit, DataConfig):
    kind: Literal["pairs"] = Field("pairs", description=KIND)
    builtin: list[str] = Field(default_factory=list, max_length=0,
                               description="none for pairs: give the pair files in data.paths")
    source_column: int | str = Field(0, description="CSV/TSV column of the source (index, or header name)")
    target_column: int | str = Field(1, description="CSV/TSV column of the target (index, or header name)")
    source_field: str = Field("source", description="JSONL field of the source")
    target_field: str = Field("target", description="JSONL field of the target")
    reverse: bool = Field(False, description="swap source and target (translate the other way)")
