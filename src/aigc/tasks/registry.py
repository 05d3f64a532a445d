"""The one place that maps a run's ``data.kind`` to its :class:`~aigc.tasks.base.Task`.

Adding a kind of run is one package under ``aigc/tasks/`` and one line here. Tasks are imported on
first use, so ``aigc --help`` does not load torch or the image libraries.
"""

from __future__ import annotations

import importlib

from aigc.config import Config
from aigc.errors import ConfigError
from aigc.tasks.base import Task

TASKS = {
    "text": "aigc.tasks.text.task:TextTask",
    "pairs": "aigc.tasks.pairs.task:PairsTask",
    "images": "aigc.tasks.images.task:ImageTask",
    "chat": "aigc.tasks.chat.task:ChatTask",
    "speech": "aigc.tasks.speech.task:SpeechTask",
}


def task_for(config: Config) -> Task:
    """The task of ``config.data.kind``; a clear error that lists the kinds when it is unknown."""
    target = TASKS.get(config.data.kind)
    if target is None:
        raise ConfigError(f"data.kind={config.data.kind!r} is not a kind of run aigc knows; use one of {', '.join(TASKS)}")
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)()
