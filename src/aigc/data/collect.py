"""The collect stage: find every input file, read it once, and record what it holds.

Collect does not copy data. It resolves ``data.paths`` and ``data.builtin`` into a file list, counts
the records each file yields (and what could not be read), and writes ``data/sources.json``. Its
fingerprint (paths, sizes, modification times) tells the pipeline whether prepare must run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from aigc.config import Config, DataConfig
from aigc.data.clean import CleaningReport
from aigc.data.sources import SourceFile, fingerprint, resolve_sources
from aigc.files import write_json

SOURCES = "sources.json"
Reader = Callable[[SourceFile, DataConfig, CleaningReport], Iterator[object]]


@dataclass
class CollectResult:
    files: int
    records: int
    bytes: int
    report: CleaningReport
    path: Path

    def summary(self) -> str:
        files = f"{self.files:,} file{'s' if self.files != 1 else ''}"
        origin = f"{files} ({self.bytes / 1e6:,.1f} MB)" if self.files else "the built-in sources"
        lines = [f"collected {self.records:,} records from {origin} -> {self.path}"]
        if self.report.dropped:
            lines.append("unreadable input (skipped):")
            lines.append(self.report.table(with_kept=False))
        return "\n".join(lines)


def collect_files(config: Config, read: Reader) -> CollectResult:
    """Resolve the sources of ``config.data``, count the records ``read`` finds in each, write ``data/sources.json``."""
    sources = resolve_sources(config.data)
    report = CleaningReport()
    listing = []
    for source in sources:
        records = sum(1 for _ in read(source, config.data, report))
        listing.append({"source": source.label, "path": str(source.path), "bytes": source.path.stat().st_size,
                        "records": records})
    return write_sources(config, sources, listing, report)


def write_sources(config: Config, sources: list[SourceFile], listing: list[dict], report: CleaningReport,
                  records: int | None = None) -> CollectResult:
    """Write ``data/sources.json``: the files, their record counts and what could not be read."""
    path = config.run_dir / "data" / SOURCES
    write_json(path, {"fingerprint": fingerprint(sources), "files": listing, "unreadable": report.to_dict()["dropped"]})
    total = records if records is not None else sum(item["records"] for item in listing)
    return CollectResult(len(listing), total, sum(item["bytes"] for item in listing), report, path)
