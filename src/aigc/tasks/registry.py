"""The one place that lists the kinds of run: each ``data.kind``, its :class:`~aigc.tasks.base.Task` and its
``data`` settings.

Adding a kind of run is one package under ``aigc/tasks/`` and one line here. Tasks are imported on
first use, so ``aigc --help`` does not load torch or the image libraries; the settings classes import
only pydantic (:mod:`aigc.config` builds the ``data`` section from them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aigc.errors import ConfigError

if TYPE_CHECKING:
    from aigc.config import Config
    from aigc.sections import DataConfig
    from aigc.tasks.base import Task

KINDS = {  # data.kind -> (its Task, its data settings)
    "text": ("aigc.tasks.text.task:TextTask", "aigc.tasks.text.settings:TextData"),
    "pairs": ("aigc.tasks.pairs.task:PairsTask", "aigc.tasks.pairs.settings:PairsData"),
    "images": ("aigc.tasks.images.task:ImageTask", "aigc.tasks.images.settings:ImagesData"),
    "chat": ("aigc.tasks.chat.task:ChatTask", "aigc.tasks.chat.settings:ChatData"),
    "speech": ("aigc.tasks.speech.task:SpeechTask", "aigc.tasks.speech.settings:SpeechData"),
}


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def data_settings() -> dict[str, type[DataConfig]]:
    """Each kind's ``data`` settings class, by ``data.kind``."""
    return {kind: _load(settings) for kind, (_, settings) in KINDS.items()}


def task_for(config: Config) -> Task:
    """The task of ``config.data.kind``; a clear error that lists the kinds when it is unknown."""
    entry = KINDS.get(config.data.kind)
    if entry is None:
        raise ConfigError(f"data.kind={config.data.kind!r} is not a kind of run aigc knows; use one of {', '.join(KINDS)}")
    return _load(entry[0])()
