"""The settings of a speech run: the built-in spoken words, clip length and the codebooks (``data``), the voice
and speed it speaks with (``generate``), and classifier-free guidance (:mod:`aigc.tasks.guidance`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig, TestSplit
from aigc.tasks.guidance import GuidedEval, GuidedGenerate, GuidedTrain


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


class SpeechGenerate(GuidedGenerate):
    voice: str | None = Field(None, description="the voice to speak in (one the run was trained on; none = its "
                              "first)")
    speed: float = Field(1.0, ge=0.25, le=4.0, description="playback speed of the generated audio")


SECTIONS = {"data": SpeechData, "train": GuidedTrain, "eval": GuidedEval, "generate": SpeechGenerate}
