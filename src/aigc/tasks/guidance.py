"""Settings of the kinds that draw from a caption prefix with classifier-free guidance (images and speech).

Only pydantic here, like every kind's settings: :mod:`aigc.config` adds these fields to the shared
``train``, ``eval`` and ``generate`` sections of an images or speech run.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from aigc.sections import Section

Guidance = Annotated[float, Field(ge=0, le=20)]  # the scale's bounds: the recipe, the CLI flag and the HTTP field


class GuidedTrain(Section):
    condition_dropout: float = Field(0.0, ge=0, lt=1, description="share of captions dropped, so the model also "
                                     "learns to draw without one (what classifier-free guidance subtracts)")


class GuidedEval(Section):
    samples_per_prompt: int = Field(16, ge=2, description="samples drawn for each evaluated prompt (speech: for each "
                                    "word and voice)")


class GuidedGenerate(Section):
    guidance: Guidance = Field(1.0, description="classifier-free guidance scale (1 = none)")
