"""The one place that lists the kinds of run: each ``data.kind``, its :class:`~aigc.tasks.base.Task` and its
settings (its ``data`` section, and what it adds to the shared ``train``, ``eval`` and ``generate`` sections).

Adding a kind of run is one package under ``aigc/tasks/`` and one line here. Tasks are imported on
first use, so ``aigc --help`` does not load torch or the image libraries; the settings classes import
only pydantic (:mod:`aigc.config` builds each kind's config from them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aigc.errors import ConfigError

if TYPE_CHECKING:
    from aigc.config import Config
    from aigc.sections import Section
    from aigc.tasks.base import Task

KINDS = {  # data.kind -> (its Task, its settings: section name -> the section, or what it adds to the shared one)
    "text": ("aigc.tasks.text.task:TextTask", "aigc.tasks.text.settings:SECTIONS"),
    "pairs": ("aigc.tasks.pairs.task:PairsTask", "aigc.tasks.pairs.settings:SECTIONS"),
    "images": ("aigc.tasks.images.task:ImageTask", "aigc.tasks.images.settings:SECTIONS"),
    "chat": ("aigc.tasks.chat.task:ChatTask", "aigc.tasks.chat.settings:SECTIONS"),
    "speech": ("aigc.tasks.speech.task:SpeechTask", "aigc.tasks.speech.settings:SECTIONS"),
    "preference": ("aigc.tasks.preference.task:PreferenceTask", "aigc.tasks.preference.settings:SECTIONS"),
}


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def kind_settings() -> dict[str, dict[str, type[Section]]]:
    """Each kind's settings by ``data.kind``: ``{"data": its data section, "eval": what it adds to eval, ...}``."""
    return {kind: _load(settings) for kind, (_, settings) in KINDS.items()}


def task_for(config: Config) -> Task:
    """The task of ``config.data.kind``; a clear error that lists the kinds when it is unknown."""
    entry = KINDS.get(config.data.kind)
    if entry is None:
        raise ConfigError(f"data.kind={config.data.kind!r} is not a kind of run aigc knows; use one of {', '.join(KINDS)}")
    return _load(entry[0])()
