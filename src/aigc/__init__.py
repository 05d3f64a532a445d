"""aigc: from raw data to a deployed generative model, on a laptop CPU or on GPUs.

The public Python API: each pipeline stage is a function (``collect``, ``prepare``, ``train``, ``evaluate``) and ``run_pipeline`` chains them.
They are imported on first use, so ``import aigc`` is cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("aigc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

_EXPORTS = {
    "AigcError": "aigc.errors",
    "Config": "aigc.config",
    "load_config": "aigc.config",
    "collect": "aigc.tasks.stages",
    "prepare": "aigc.tasks.stages",
    "train": "aigc.training.loop",
    "evaluate": "aigc.tasks.stages",
    "run_pipeline": "aigc.pipeline",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aigc' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
