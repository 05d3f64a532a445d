"""Kinds of run as plug-ins: one package per kind (``text``, ``chat``, ``pairs``, ``images``, ``speech``) with its
:class:`~aigc.tasks.base.Task` and its ``data`` settings, listed once in :mod:`.registry`.

The stage functions (:mod:`.stages`) ask the run's task; nothing else in aigc asks what kind a run is. They are
imported on first use, so the kinds' settings (pydantic only) load without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"collect": "aigc.tasks.stages", "prepare": "aigc.tasks.stages", "evaluate": "aigc.tasks.stages",
            "load_generator": "aigc.tasks.stages", "task_for": "aigc.tasks.registry"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'aigc.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
