"""The collect stage: find every input file, read it once, and record what it holds.

Collect does not copy data. It resolves ``data.paths`` and ``data.builtin`` into a file list, counts
the records each file yields (and what could not be read), and writes ``data/sources.json``. Its
fingerprint (paths, sizes, modification times) tells the pipeline whether prepare must run again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aigc.config import Config
from aigc.data.clean import CleaningReport
from aigc.data.pairs import read_pairs
from aigc.data.sources import SourceFile, read_source, resolve_sources
from aigc.files import write_json

SOURCES = "sources.json"


@dataclass
class CollectResult:
    files: int
    records: int
    bytes: int
    report: CleaningReport
    path: Path

    def summary(self) -> str:
        lines = [f"collected {self.records:,} records from {self.files:,} files ({self.bytes / 1e6:,.1f} MB) -> {self.path}"]
        if self.report.dropped:
            lines.append("unreadable input (skipped):")
            lines.append(self.report.table())
        return "\n".join(lines)


def fingerprint(sources: list[SourceFile]) -> str:
    """A hash of every file's path, size and modification time: changes when the inputs change."""
    digest = hashlib.sha256()
    for source in sources:
        stat = source.path.stat()
        digest.update(f"{source.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def collect(config: Config) -> CollectResult:
    """Resolve the sources of ``config.data``, count their records, write ``<run>/data/sources.json``."""
    sources = resolve_sources(config.data)
    report = CleaningReport()
    listing = []
    total_records = total_bytes = 0
    if config.data.kind == "images":
        from aigc.images.sources import image_records  # images build on the data layer

        total_records = sum(1 for _ in image_records(sources, config.data, report))
        sources = []
    reader = read_pairs if config.data.kind == "pairs" else read_source
    for source in sources:
        records = sum(1 for _ in reader(source, config.data, report))
        size = source.path.stat().st_size
        listing.append({"source": source.label, "path": str(source.path), "bytes": size, "records": records})
        total_records += records
        total_bytes += size
    path = config.run_dir / "data" / SOURCES
    write_json(path, {"fingerprint": fingerprint(sources), "files": listing, "unreadable": report.to_dict()["dropped"]})
    return CollectResult(len(sources), total_records, total_bytes, report, path)
