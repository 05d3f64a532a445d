"""Stopping a run cleanly: the first Ctrl-C or SIGTERM becomes a flag the loop checks between steps."""

from __future__ import annotations

import contextlib
import signal


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks between steps; a second SIGINT aborts."""

    def __init__(self):
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
