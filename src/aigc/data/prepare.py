"""The prepare stage: clean, train (or load) a tokenizer, tokenize and shard.

Two streaming passes over the sources when a tokenizer is trained (one to learn the vocabulary on at
most ``tokenizer.train_max_mb`` of cleaned text, one to encode everything), one pass when
``tokenizer.path`` names an existing tokenizer. Memory holds one batch of documents at a time.
Tokenization runs in ``tokenizers``' Rust thread pool (every core) through its batch API.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from aigc.config import Config
from aigc.data.clean import CleaningReport, Record, clean_records
from aigc.data.collect import fingerprint
from aigc.data.shards import FORMAT_VERSION, MANIFEST, ShardWriter, is_validation, token_dtype
from aigc.data.sources import SourceFile, iter_records, resolve_sources
from aigc.errors import DataError
from aigc.files import file_hash, write_json
from aigc.tokenizer import eot_id, load_tokenizer, train_bpe, train_char

TOKENIZER_FILE = "tokenizer.json"
_BATCH_CHARS = 1 << 20  # documents are encoded in batches of about this many characters


@dataclass
class PrepareResult:
    manifest: dict
    report: CleaningReport
    data_dir: Path

    def summary(self) -> str:
        splits = self.manifest["splits"]
        tok = self.manifest["tokenizer"]
        return "\n".join(
            [
                self.report.table(),
                f"tokenizer: {tok['kind']}, {tok['vocab_size']:,} tokens",
                *(f"{name}: {s['documents']:,} documents, {s['tokens']:,} tokens" for name, s in splits.items()),
                f"wrote {self.data_dir / MANIFEST}",
            ]
        )


def _cleaned(sources: list[SourceFile], config: Config, report: CleaningReport) -> Iterator[Record]:
    return clean_records(iter_records(sources, config.data, report), config.data, report)


def _capped(records: Iterator[Record], max_chars: float) -> Iterator[str]:
    """Texts from ``records`` until about ``max_chars`` characters have been given."""
    total = 0
    for record in records:
        yield record.text
        total += len(record.text)
        if total >= max_chars:
            return


def _tokenizer_for(sources: list[SourceFile], config: Config) -> Tokenizer | None:
    """The tokenizer named by ``tokenizer.path``, or one trained on the cleaned corpus (None if it is empty)."""
    if config.tokenizer.path is not None:
        return load_tokenizer(config.tokenizer.path)
    texts = _capped(_cleaned(sources, config, CleaningReport()), config.tokenizer.train_max_mb * 1e6)
    first = next(texts, None)
    if first is None:
        return None  # nothing usable: the encoding pass reports why
    texts = itertools.chain([first], texts)
    if config.tokenizer.kind == "bpe":
        return train_bpe(texts, config.tokenizer.vocab_size)
    return train_char(texts, config.tokenizer.vocab_size)


def _batches(records: Iterator[Record]) -> Iterator[list[Record]]:
    batch: list[Record] = []
    chars = 0
    for record in records:
        batch.append(record)
        chars += len(record.text)
        if chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode(tokenizer: Tokenizer, texts: list[str], eot: int, dtype: np.dtype) -> tuple[np.ndarray, list[int]]:
    """Ids of ``texts`` each followed by ``eot``, concatenated, and the length of each document."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = encode(texts, add_special_tokens=False)
    pieces, lengths = [], []
    separator = np.array([eot], dtype=dtype)
    for encoding in encodings:
        pieces.append(np.asarray(encoding.ids, dtype=dtype))
        pieces.append(separator)
        lengths.append(len(encoding.ids) + 1)
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype)), lengths


def _empty_corpus_error(report: CleaningReport, sources: list[SourceFile]) -> DataError:
    reasons = ", ".join(f"{t.count:,} {r}" for r, t in sorted(report.dropped.items())) or "no records at all"
    return DataError(
        f"nothing usable in {len(sources)} input file(s) after cleaning ({reasons}).\n{report.table()}\n"
        "Check data.paths, data.field / data.column, and data.min_chars / data.max_chars."
    )


def prepare(config: Config) -> PrepareResult:
    """Clean, tokenize and shard the sources of ``config`` into ``<run>/data``; write ``<run>/tokenizer.json``."""
    sources = resolve_sources(config.data)
    run_dir = config.run_dir
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)  # until the new one is complete, the folder is not prepared

    tokenizer = _tokenizer_for(sources, config)
    report = CleaningReport()
    if tokenizer is None:
        list(_cleaned(sources, config, report))  # fill the report for the message
        raise _empty_corpus_error(report, sources)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    eot = eot_id(tokenizer)

    fraction = 0.0 if config.data.val_paths else config.data.val_fraction
    writers = {split: ShardWriter(data_dir / f".{split}.bin.tmp", dtype) for split in ("train", "val")}
    total_bytes = sum(s.path.stat().st_size for s in sources)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", delay=2.0, file=sys.stderr,
              disable=not sys.stderr.isatty()) as bar:
        seen_bytes = 0
        for batch in _batches(_cleaned(sources, config, report)):
            ids, lengths = _encode(tokenizer, [r.text for r in batch], eot, dtype)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            to_val = [
                r.split == "val" if r.split else is_validation(r.text, fraction, config.seed) for r in batch
            ]
            for split, wanted in (("train", False), ("val", True)):
                chosen = [i for i, v in enumerate(to_val) if v == wanted]
                if chosen:
                    parts = [ids[offsets[i] : offsets[i + 1]] for i in chosen]
                    writers[split].write(np.concatenate(parts), len(chosen), lengths[chosen[-1]])
            done = report.kept_bytes + sum(t.bytes for t in report.dropped.values())
            bar.update(max(0, min(done, total_bytes) - seen_bytes))
            seen_bytes = max(seen_bytes, min(done, total_bytes))

    if report.kept == 0:
        for writer in writers.values():
            writer.close()
            writer.path.unlink()
        raise _empty_corpus_error(report, sources)
    if writers["val"].documents == 0 and writers["train"].documents > 1 and fraction > 0:
        moved = writers["train"].pop_last()
        writers["val"].write(moved, 1, len(moved))
    splits = {}
    for split, writer in writers.items():
        info = writer.close()
        final = data_dir / f"{split}.bin"
        writer.path.replace(final)
        splits[split] = info | {"file": final.name}

    tokenizer_path = run_dir / TOKENIZER_FILE
    if config.tokenizer.path is None or config.tokenizer.path.resolve() != tokenizer_path.resolve():
        tmp = tokenizer_path.with_name(f".{TOKENIZER_FILE}.tmp")
        if config.tokenizer.path is not None:
            shutil.copyfile(config.tokenizer.path, tmp)
        else:
            tokenizer.save(str(tmp))
        tmp.replace(tokenizer_path)
    manifest = {
        "format": FORMAT_VERSION,
        "dtype": dtype.name,
        "tokenizer": {
            "kind": config.tokenizer.kind,
            "vocab_size": vocab_size,
            "eot_id": eot,
            "file": TOKENIZER_FILE,
            "sha256": file_hash(tokenizer_path),
        },
        "splits": splits,
        "sources": {"files": [s.label for s in sources], "bytes": total_bytes, "fingerprint": fingerprint(sources)},
        "cleaning": report.to_dict(),
        "config": {"data": config.data.model_dump(mode="json"), "tokenizer": config.tokenizer.model_dump(mode="json")},
        "seed": config.seed,
    }
    write_json(data_dir / "cleaning_report.json", report.to_dict())
    write_json(data_dir / MANIFEST, manifest)
    return PrepareResult(manifest, report, data_dir)
