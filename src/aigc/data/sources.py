"""Where raw records come from: files, folders, glob patterns and built-in corpora.

Everything streams: a file is read line by line (or whole, when one file is one document and it is
small enough to be kept), so memory does not grow with the corpus. Unreadable input is skipped and
tallied in the :class:`~aigc.data.clean.CleaningReport`; only a path that does not exist, or a CSV
without the asked column, stops the stage, because those are mistakes in the request, not in the data.
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import hashlib
import json
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigc.config import DataConfig
from aigc.data.clean import CleaningReport, Record
from aigc.errors import DataError

STDLIB_CORPORA = ("stdlib", "stdlib_functions")  # built-in corpora read from the standard library's files
_SNIFF_BYTES = 8192
JSONL = {".jsonl", ".ndjson"}
_DELIMITED = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class SourceFile:
    """A file to read, the built-in corpus it belongs to (for readable provenance), and its fixed split."""

    path: Path
    builtin: str | None = None
    split: str | None = None

    @property
    def label(self) -> str:
        if self.builtin in STDLIB_CORPORA:
            return f"stdlib:{self.path.relative_to(stdlib_root()).as_posix()}"
        return str(self.path)


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).resolve()


def _stdlib_files(builtin: str) -> list[SourceFile]:
    """The ``.py`` files of the running interpreter's standard library, without installed packages."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages"}
    return [
        SourceFile(path, builtin)
        for path in sorted(root.rglob("*.py"))
        if not skip.intersection(path.relative_to(root).parts) and path.is_file()
    ]


def _walk(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, sorted, skipping hidden files and folders (``.git`` ...)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts):
            found.append(path)
    return found


def _expand(entries: list[str], key: str, split: str | None) -> list[SourceFile]:
    """Files named by path, folder or glob entries of the setting ``key``."""
    files: list[SourceFile] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if path.is_file():
            files.append(SourceFile(path, split=split))
        elif path.is_dir():
            files.extend(SourceFile(p, split=split) for p in _walk(path))
        elif glob.has_magic(entry):
            matches = sorted(Path(m) for m in glob.glob(str(path), recursive=True))
            if not matches:
                raise DataError(f"the pattern '{entry}' ({key}) matches no file; check it, and quote it so the shell does not expand it")
            for match in matches:
                files.extend(SourceFile(p, split=split) for p in (_walk(match) if match.is_dir() else [match]))
        else:
            raise DataError(f"no such file or folder: '{entry}' ({key}); give existing files, folders or glob patterns")
    return files


def resolve_sources(config: DataConfig) -> list[SourceFile]:
    """Expand ``data.paths``, ``data.builtin`` and ``data.val_paths`` into a de-duplicated file list, in order."""
    files = _expand(config.paths, "data.paths", None)
    for name in config.builtin:
        files.extend(_stdlib_files(name) if name in STDLIB_CORPORA else [])
    if not files and not set(config.builtin) - set(STDLIB_CORPORA):
        raise DataError("no input data: set data.paths=[file, folder or pattern, ...] or data.builtin=[stdlib]")
    files.extend(_expand(config.val_paths, "data.val_paths", "val"))
    if config.exclude:
        kept = [f for f in files if not any(fnmatch.fnmatchcase(f.path.as_posix(), p) for p in config.exclude)]
        if files and not kept:
            raise DataError(f"data.exclude={config.exclude} leaves none of the {len(files):,} input files; "
                            "loosen the patterns (they match each file's full path)")
        files = kept
    unique: dict[Path, SourceFile] = {}
    for source in files:  # a file named by data.val_paths is val even when a data.paths folder holds it too
        path = source.path.resolve()
        if path not in unique or source.split:
            unique[path] = source
    return list(unique.values())


def _line_number(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _read_whole(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Record]:
    """One file = one document. Files over 4 bytes per allowed character cannot pass and are not read."""
    size = source.path.stat().st_size
    if size > 4 * config.max_chars:
        report.drop("too_long", source.label, size, f"{size:,} bytes")
        return
    data = source.path.read_bytes()
    if b"\0" in data[:_SNIFF_BYTES]:
        report.drop("binary", source.label, size)
        return
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        report.drop("invalid_utf8", source.label, size, f"line {_line_number(data, err.start)}")
        return
    yield Record(text, source.label, source.split)


def _decoded_lines(source: SourceFile, report: CleaningReport) -> Iterator[tuple[int, str]]:
    """(line number, text with its newline) of a text file, skipping and tallying lines that are not UTF-8."""
    with source.path.open("rb") as handle:
        if b"\0" in handle.read(_SNIFF_BYTES):
            report.drop("binary", source.label, source.path.stat().st_size)
            return
        handle.seek(0)
        for number, raw in enumerate(handle, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                report.drop("invalid_utf8", f"{source.label}:{number}", len(raw))
                continue
            yield number, line


def _read_lines(source: SourceFile, report: CleaningReport) -> Iterator[Record]:
    for number, line in _decoded_lines(source, report):
        yield Record(line.rstrip("\r\n"), f"{source.label}:{number}", source.split)


def _read_paragraphs(source: SourceFile, report: CleaningReport) -> Iterator[Record]:
    """Blank-line separated paragraphs, each labelled with the line it starts on.

    A file of several lines and no blank line at all (one poem, one sentence or one record per line, as
    Chinese corpora often are) is read one document per line instead, and the report says so: as one
    paragraph it would be one document, too long to split into train and val and cut anywhere by
    ``data.max_chars``.
    """
    lines: list[str] = []
    start = 0
    blank_seen = False
    for number, line in _decoded_lines(source, report):
        if line.strip():
            if not lines:
                start = number
            lines.append(line)
        elif lines:
            blank_seen = True
            yield Record("".join(lines).rstrip("\r\n"), f"{source.label}:{start}", source.split)
            lines = []
    if len(lines) > 1 and not blank_seen:
        report.note(f"{source.label} has no blank line: read as {len(lines):,} documents, one per line "
                    "(data.document=file keeps it as one document)")
        for offset, line in enumerate(lines):
            yield Record(line.rstrip("\r\n"), f"{source.label}:{start + offset}", source.split)
    elif lines:
        yield Record("".join(lines).rstrip("\r\n"), f"{source.label}:{start}", source.split)


def json_objects(source: SourceFile, report: CleaningReport) -> Iterator[tuple[Any, str, int]]:
    """(parsed object, "file:line", line length) of each non-blank JSONL line; bad JSON tallied in ``report``."""
    for number, line in _decoded_lines(source, report):
        if not line.strip():
            continue
        where = f"{source.label}:{number}"
        try:
            yield json.loads(line), where, len(line)
        except json.JSONDecodeError as err:
            report.drop("bad_json", where, len(line), err.msg)


def _read_jsonl(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Record]:
    for obj, where, size in json_objects(source, report):
        value = obj.get(config.field) if isinstance(obj, dict) else None
        if not isinstance(value, str):
            report.drop("missing_field", where, size, f"no string field '{config.field}' (data.field)")
            continue
        yield Record(value, where, source.split)


def _read_delimited(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Record]:
    delimiter = _DELIMITED[source.path.suffix.lower()]
    csv.field_size_limit(sys.maxsize)
    with source.path.open("r", encoding="utf-8-sig", newline="") as handle:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TSV: quotes are text, as for pairs
        reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
        try:
            header = reader.fieldnames or []
            if config.column not in header:
                raise DataError(
                    f"{source.label}:1: no column '{config.column}' (data.column); the header has: {', '.join(header) or 'nothing'}"
                )
            for row in reader:
                value = row.get(config.column)
                if value is None:
                    report.drop("missing_field", f"{source.label}:{reader.line_num}", 0, "row has too few columns")
                    continue
                if None in row:  # DictReader files the fields past the header under None
                    report.drop("extra_columns", f"{source.label}:{reader.line_num}", 0,
                                f"{len(header) + len(row[None])} fields, the header has {len(header)}")
                    continue
                yield Record(value, f"{source.label}:{reader.line_num}", source.split)
        except UnicodeDecodeError:
            report.drop("invalid_utf8", f"{source.label}:{reader.line_num + 1}", source.path.stat().st_size, "rest of file skipped")
        except csv.Error as err:
            report.drop("bad_csv", f"{source.label}:{reader.line_num}", 0, f"{err}; rest of file skipped")


def read_source(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Record]:
    """Records of one file, by its format: JSONL, CSV/TSV, or plain text split per ``data.document``."""
    suffix = source.path.suffix.lower()
    try:
        if suffix in JSONL:
            yield from _read_jsonl(source, config, report)
        elif suffix in _DELIMITED:
            yield from _read_delimited(source, config, report)
        elif config.document == "file":
            yield from _read_whole(source, config, report)
        elif config.document == "paragraph":
            yield from _read_paragraphs(source, report)
        else:
            yield from _read_lines(source, report)
    except OSError as err:
        report.drop("unreadable", source.label, 0, err.strerror or str(err))


def iter_records(sources: list[SourceFile], config: DataConfig, report: CleaningReport) -> Iterator[Record]:
    """Raw records of every source in order (not yet cleaned)."""
    for source in sources:
        yield from read_source(source, config, report)


def fingerprint(sources: list[SourceFile]) -> str:
    """A hash of every file's path, size and modification time: changes when the inputs change."""
    digest = hashlib.sha256()
    for source in sources:
        stat = source.path.stat()
        digest.update(f"{source.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
