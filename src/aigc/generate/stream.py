"""Text that is final while it is generated: whole UTF-8 characters, and never part of a stop string.

Streaming decodes each row's generated ids and emits only text that is final:

- never half a character: byte-level BPE can end a step in the middle of a multi-byte UTF-8 character,
  which decodes to U+FFFD; such a tail is held until the next token completes it;
- never part of a stop string: a tail that could still grow into a stop string is held until it
  either does (then it is cut, and the stop text is never emitted) or cannot any more.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


def _held_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class TextStream:
    """Incremental detokenizer for one sequence, with stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...] = ()):
        self.decode, self.stops = decode, stops
        self.ids: list[int] = []
        self.emitted = 0  # characters of the final text already handed out
        self.text = ""
        self.stopped = False

    def add(self, token: int) -> str:
        """Take one generated id; return the text that became final (possibly empty)."""
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith(REPLACEMENT):
            return ""
        self.text = text
        start = max(0, self.emitted - max((len(s) for s in self.stops), default=0))
        cuts = [i for i in (text.find(s, start) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            self.text = text[: min(cuts)]
            return self._emit(len(self.text))
        return self._emit(len(text) - _held_length(text, self.stops))

    def finish(self) -> str:
        """The generation ended: release whatever is still held."""
        if not self.stopped:
            self.text = self.decode(self.ids)
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        piece = self.text[self.emitted : end]
        self.emitted = max(self.emitted, end)
        return piece
