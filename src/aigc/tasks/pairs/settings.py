"""The settings of a translation run: where each side of a pair is, which way to translate (``data``), the beam
search (``generate``) and how many test pairs are scored (``eval``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig, Section, TestSplit


class PairsData(TestSplit, DataConfig):
    kind: Literal["pairs"] = Field("pairs", description=KIND)
    builtin: list[str] = Field(default_factory=list, max_length=0,
                               description="none for pairs: give the pair files in data.paths")
    source_column: int | str = Field(0, description="CSV/TSV column of the source (index, or header name)")
    target_column: int | str = Field(1, description="CSV/TSV column of the target (index, or header name)")
    source_field: str = Field("source", description="JSONL field of the source")
    target_field: str = Field("target", description="JSONL field of the target")
    reverse: bool = Field(False, description="swap source and target (translate the other way)")


class BeamGenerate(Section):
    beams: int = Field(1, ge=1, description="beam size (1 = greedy or sampling)")
    length_penalty: float = Field(1.0, description="beam search: a hypothesis's score / length^alpha")
    no_repeat_ngram: int = Field(0, ge=0, description="beam search: forbid repeated n-grams of this size")


class PairsEval(Section):
    max_pairs: int = Field(1000, ge=1, description="test pairs translated for BLEU and chrF")


SECTIONS = {"data": PairsData, "generate": BeamGenerate, "eval": PairsEval}
