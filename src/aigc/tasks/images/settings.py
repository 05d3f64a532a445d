"""The settings of an image run: the built-in data sets, the image side and the palette (``data``), and
classifier-free guidance (:mod:`aigc.tasks.guidance`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from aigc.sections import KIND, DataConfig, TestSplit
from aigc.tasks.guidance import GuidedEval, GuidedGenerate, GuidedTrain


class ImagesData(TestSplit, DataConfig):
    kind: Literal["images"] = Field("images", description=KIND)
    builtin: list[Literal["digits", "shapes"]] = Field(
        default_factory=list, description="built-in sources: digits = scikit-learn's 8x8 digits, shapes = drawn "
        "shape scenes")
    image_size: int = Field(8, ge=4, le=64, description="side in pixels (8, 16 or 32 are practical on a CPU)")
    palette: Literal["grey", "kmeans"] = Field("grey", description="grey levels, or a k-means colour palette")
    colors: int = Field(16, ge=2, le=512, description="palette size (tokens per pixel)")


SECTIONS = {"data": ImagesData, "train": GuidedTrain, "eval": GuidedEval, "generate": GuidedGenerate}
