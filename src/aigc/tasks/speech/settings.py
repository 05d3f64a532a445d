"""The ``data`` settings of a speech run: the built-in spoken words, clip length and the codebooks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig, TestSplit


class SpeechData(TestSplit, DataConfig):
    kind: Literal["speech"] = Field("speech", description=KIND)
    builtin: list[Literal["spoken_words"]] = Field(
        default_factory=list, description="built-in sources: spoken_words = the 35 Speech Commands words "
        "synthesised by espeak-ng in four voices")
    max_seconds: float = Field(1.0, gt=0, le=60, description="longest clip kept (after trimming silence); every "
                               "clip is padded with silence to this length")
    codebook_size: int = Field(256, ge=8, le=4096, description="entries of each k-means codebook of log-mel frames "
                               "(audio tokens)")
    codebooks: int = Field(1, ge=1, le=2, description="2 adds a residual codebook (two tokens per frame)")
