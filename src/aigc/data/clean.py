"""Cleaning: pure text filters plus a report of everything that was dropped and why.

Every record passes, in order: line endings to ``\\n``, Unicode NFC, control characters removed (newline
and tab kept), then the drop filters (empty, too short, too long, exact duplicate). Records that sources
could not read at all (binary files, invalid UTF-8, bad JSON lines) are reported here too, so the user
sees one table of what did not make it into the corpus.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from aigc.config import DataConfig

# C0 and C1 control characters except tab (\x09) and newline (\x0a); \r is handled before this runs.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_EXAMPLES_PER_REASON = 3


@dataclass(frozen=True)
class Record:
    """One document of raw text, where it came from (``path``, ``path:line``, ``stdlib:module``), and its split
    when the user fixed it (``data.val_paths``); None lets the keyed hash decide."""

    text: str
    source: str
    split: str | None = None


@dataclass
class ReasonTally:
    count: int = 0
    bytes: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class CleaningReport:
    """Counts and bytes kept and dropped per reason, with a few examples of each drop."""

    kept: int = 0
    kept_bytes: int = 0
    dropped: dict[str, ReasonTally] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # how the input was read, when it was not as asked

    def drop(self, reason: str, source: str, size: int, detail: str = "") -> None:
        tally = self.dropped.setdefault(reason, ReasonTally())
        tally.count += 1
        tally.bytes += size
        if len(tally.examples) < _EXAMPLES_PER_REASON:
            tally.examples.append(f"{source}: {detail}" if detail else source)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def keep(self, size: int) -> None:
        self.kept += 1
        self.kept_bytes += size

    def to_dict(self) -> dict:
        return {
            "kept": {"documents": self.kept, "bytes": self.kept_bytes},
            "dropped": {
                reason: {"documents": t.count, "bytes": t.bytes, "examples": t.examples}
                for reason, t in sorted(self.dropped.items())
            },
            "notes": self.notes,
        }

    def table(self, with_kept: bool = True) -> str:
        """A fixed-width table for the terminal; ``with_kept=False`` for a stage that only reads (collect), which
        keeps nothing and would show a confusing "kept 0"."""
        rows = [("kept", self.kept, self.kept_bytes)] if with_kept else []
        rows += [(f"dropped: {r}", t.count, t.bytes) for r, t in sorted(self.dropped.items())]
        width = max(len(r[0]) for r in rows)
        lines = [f"{'':<{width}}  {'documents':>10}  {'bytes':>14}"]
        lines += [f"{name:<{width}}  {count:>10,}  {size:>14,}" for name, count, size in rows]
        for reason, tally in sorted(self.dropped.items()):
            for example in tally.examples:
                lines.append(f"  e.g. {reason}: {example}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def normalize(text: str) -> str:
    """Line endings to ``\\n``, Unicode NFC, control characters except newline and tab removed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return _CONTROL.sub("", text)


def _preview(text: str, limit: int = 60) -> str:
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def clean_records(records: Iterable[Record], config: DataConfig, report: CleaningReport) -> Iterator[Record]:
    """Yield normalised records that pass every filter; tally the rest in ``report``."""
    seen: set[bytes] = set()
    for record in records:
        text = normalize(record.text)
        size = len(record.text.encode("utf-8", "surrogatepass"))
        if not text.strip():
            report.drop("empty", record.source, size)
            continue
        if len(text) < config.min_chars:
            report.drop("too_short", record.source, size, f"{len(text)} chars {_preview(text)}")
            continue
        if len(text) > config.max_chars:
            report.drop("too_long", record.source, size, f"{len(text):,} chars")
            continue
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in seen:
            report.drop("duplicate", record.source, size, _preview(text))
            continue
        seen.add(digest)
        report.keep(size)
        yield Record(text, record.source, record.split)
