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
from aigc.data.pairs import PAIR_SPLITS, clean_pairs, pair_split
from aigc.data.shards import FORMAT_VERSION, MANIFEST, ShardWriter, is_validation, token_dtype
from aigc.data.sources import SourceFile, iter_records, resolve_sources
from aigc.errors import DataError
from aigc.files import file_hash, write_json
from aigc.tokenizer import TARGET_TOKENIZER, eot_id, load_tokenizer, train_bpe, train_char

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
                *([f"target tokenizer: {t['kind']}, {t['vocab_size']:,} tokens (ids from {t['offset']:,})"]
                  if (t := self.manifest.get("target_tokenizer")) else []),
                *(f"{name}: {s['documents']:,} documents, {s['tokens']:,} tokens" for name, s in splits.items()),
                f"wrote {self.data_dir / MANIFEST}",
            ]
        )


def _cleaned(sources: list[SourceFile], config: Config, report: CleaningReport) -> Iterator[Record]:
    return clean_records(iter_records(sources, config.data, report), config.data, report)


def _capped(texts: Iterator[str], max_chars: float) -> Iterator[str]:
    """``texts`` until about ``max_chars`` characters have been given."""
    total = 0
    for text in texts:
        yield text
        total += len(text)
        if total >= max_chars:
            return


def _texts(sources: list[SourceFile], config: Config, report: CleaningReport, side: str | None = None) -> Iterator[str]:
    """Every cleaned text the tokenizer should learn from: documents, or each pair's ``side`` (both when None)."""
    if config.data.kind == "pairs":
        for pair in clean_pairs(sources, config.data, report):
            if side in (None, "source"):
                yield pair.source
            if side in (None, "target"):
                yield pair.target
    else:
        yield from (record.text for record in _cleaned(sources, config, report))


def _tokenizer_for(sources: list[SourceFile], config: Config, side: str | None = None) -> Tokenizer | None:
    """The tokenizer named by ``tokenizer.path``, or one trained on the cleaned corpus (None if it is empty).

    ``side`` (pairs with ``tokenizer.separate``): train on the sources or on the targets only.
    """
    if config.tokenizer.path is not None:
        if side is not None:
            raise DataError("tokenizer.path names one tokenizer; with tokenizer.separate=true both sides' tokenizers "
                            "are trained, so leave tokenizer.path unset (or set tokenizer.separate=false)")
        return load_tokenizer(config.tokenizer.path)
    texts = _capped(_texts(sources, config, CleaningReport(), side), config.tokenizer.train_max_mb * 1e6)
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


def _empty_corpus_error(report: CleaningReport, sources: list[SourceFile], kind: str) -> DataError:
    reasons = ", ".join(f"{t.count:,} {r}" for r, t in sorted(report.dropped.items())) or "no records at all"
    keys = ("data.source_column / data.target_column (data.source_field / data.target_field for JSONL)"
            if kind == "pairs" else "data.field / data.column")
    return DataError(
        f"nothing usable in {len(sources)} input file(s) after cleaning ({reasons}).\n{report.table()}\n"
        f"Check data.paths, {keys}, and data.min_chars / data.max_chars."
    )


def _shard_documents(sources, config: Config, tokenizer: Tokenizer, data_dir: Path, report: CleaningReport) -> dict:
    """Encode cleaned documents into train.bin / val.bin; return the manifest's ``splits``."""
    dtype = token_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
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
    if report.kept and writers["val"].documents == 0 and writers["train"].documents > 1 and fraction > 0:
        moved = writers["train"].pop_last()
        writers["val"].write(moved, 1, len(moved))
    return _finish(writers, data_dir)


def _shard_pairs(sources, config: Config, tokenizer: Tokenizer, data_dir: Path, report: CleaningReport,
                 target_tokenizer: Tokenizer | None = None) -> dict:
    """Encode cleaned pairs into {split}.src.bin / {split}.tgt.bin; return the manifest's ``splits``.

    With a ``target_tokenizer`` the targets are its ids shifted past the source vocabulary, so both
    sides live in one id space and one model vocabulary.
    """
    offset = tokenizer.get_vocab_size(with_added_tokens=True) if target_tokenizer else 0
    target = target_tokenizer or tokenizer
    dtype = token_dtype(offset + target.get_vocab_size(with_added_tokens=True))
    eot = eot_id(tokenizer)
    writers = {f"{split}.{side}": ShardWriter(data_dir / f".{split}.{side}.bin.tmp", dtype)
               for split in PAIR_SPLITS for side in ("src", "tgt")}
    pairs = clean_pairs(sources, config.data, report)
    while batch := list(itertools.islice(pairs, 4096)):
        src_ids, src_lengths = _encode(tokenizer, [p.source for p in batch], eot, dtype)
        tgt_ids, tgt_lengths = _encode(target, [p.target for p in batch], eot_id(target), np.dtype(np.int64))
        tgt_ids = (tgt_ids + offset).astype(dtype)
        src_offsets, tgt_offsets = np.cumsum([0, *src_lengths]), np.cumsum([0, *tgt_lengths])
        splits = [pair_split(p.source, config.data, config.seed) for p in batch]
        for split in PAIR_SPLITS:
            chosen = [i for i, s in enumerate(splits) if s == split]
            if chosen:
                for side, ids, offsets, lengths in (("src", src_ids, src_offsets, src_lengths),
                                                    ("tgt", tgt_ids, tgt_offsets, tgt_lengths)):
                    parts = np.concatenate([ids[offsets[i] : offsets[i + 1]] for i in chosen])
                    writers[f"{split}.{side}"].write(parts, len(chosen), lengths[chosen[-1]])
    return _finish(writers, data_dir)


def _finish(writers: dict[str, ShardWriter], data_dir: Path) -> dict:
    """Close the shard writers and move their files into place (or remove them if nothing was kept)."""
    splits = {}
    for name, writer in writers.items():
        info = writer.close()
        final = data_dir / f"{name}.bin"
        writer.path.replace(final)
        splits[name] = info | {"file": final.name}
    return splits


def save_tokenizer(config: Config, tokenizer: Tokenizer) -> Path:
    """Write the run's ``tokenizer.json`` atomically (a copy of ``tokenizer.path`` when one is given)."""
    tokenizer_path = config.run_dir / TOKENIZER_FILE
    if config.tokenizer.path is None or config.tokenizer.path.resolve() != tokenizer_path.resolve():
        tmp = tokenizer_path.with_name(f".{TOKENIZER_FILE}.tmp")
        if config.tokenizer.path is not None:
            shutil.copyfile(config.tokenizer.path, tmp)
        else:
            tokenizer.save(str(tmp))
        tmp.replace(tokenizer_path)
    return tokenizer_path


def prepare(config: Config) -> PrepareResult:
    """Clean, tokenize and shard the sources of ``config`` into ``<run>/data``; write ``<run>/tokenizer.json``.

    Documents (``data.kind=text``) become ``train.bin`` / ``val.bin``; pairs (``data.kind=pairs``) become
    ``{train,val,test}.{src,tgt}.bin``; captioned images (``data.kind=images``) the same plus ``heldout``.
    """
    if config.data.kind == "images":
        from aigc.images.prepare import prepare_images  # images build on this module

        return prepare_images(config)
    sources = resolve_sources(config.data)
    run_dir = config.run_dir
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)  # until the new one is complete, the folder is not prepared

    separate = config.data.kind == "pairs" and config.tokenizer.separate
    tokenizer = _tokenizer_for(sources, config, "source" if separate else None)
    target_tokenizer = _tokenizer_for(sources, config, "target") if separate and tokenizer is not None else None
    report = CleaningReport()
    if tokenizer is None:
        list(_texts(sources, config, report))  # fill the report for the message
        raise _empty_corpus_error(report, sources, config.data.kind)
    if config.data.kind == "pairs":
        splits = _shard_pairs(sources, config, tokenizer, data_dir, report, target_tokenizer)
    else:
        splits = _shard_documents(sources, config, tokenizer, data_dir, report)
    if report.kept == 0:
        for info in splits.values():
            (data_dir / info["file"]).unlink()
        raise _empty_corpus_error(report, sources, config.data.kind)

    tokenizer_path = save_tokenizer(config, tokenizer)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    model_vocab = vocab_size
    (run_dir / TARGET_TOKENIZER).unlink(missing_ok=True)
    if target_tokenizer is not None:
        target_tokenizer.save(str(run_dir / TARGET_TOKENIZER))
        target_vocab = target_tokenizer.get_vocab_size(with_added_tokens=True)
        model_vocab = vocab_size + target_vocab
    manifest = {
        "format": FORMAT_VERSION,
        "kind": config.data.kind,
        "model_vocab_size": model_vocab,
        "dtype": token_dtype(model_vocab).name,
        "tokenizer": {
            "kind": config.tokenizer.kind,
            "vocab_size": vocab_size,
            "eot_id": eot_id(tokenizer),
            "file": TOKENIZER_FILE,
            "sha256": file_hash(tokenizer_path),
        },
        "splits": splits,
        "sources": {"files": [s.label for s in sources], "bytes": sum(s.path.stat().st_size for s in sources),
                    "fingerprint": fingerprint(sources)},
        "cleaning": report.to_dict(),
        "config": {"data": config.data.model_dump(mode="json"), "tokenizer": config.tokenizer.model_dump(mode="json")},
        "seed": config.seed,
    }
    if target_tokenizer is not None:
        manifest["target_tokenizer"] = {"kind": config.tokenizer.kind, "vocab_size": target_vocab, "offset": vocab_size,
                                        "eot_id": vocab_size + eot_id(target_tokenizer), "file": TARGET_TOKENIZER,
                                        "sha256": file_hash(run_dir / TARGET_TOKENIZER)}
    write_json(data_dir / "cleaning_report.json", report.to_dict())
    write_json(data_dir / MANIFEST, manifest)
    return PrepareResult(manifest, report, data_dir)
