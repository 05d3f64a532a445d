"""The prepare stage's building blocks: encode cleaned text into shards, save the tokenizer, write the manifest.

Documents (:func:`prepare_documents`) and pairs (:func:`prepare_pairs`) are two ways to fill shards;
which one a run uses is its task's choice (:mod:`aigc.tasks`). Two streaming passes over the sources
when a tokenizer is trained (one to learn the vocabulary on at most ``tokenizer.train_max_mb`` of
cleaned text, one to encode everything), one pass when ``tokenizer.path`` names an existing tokenizer.
Memory holds one batch of documents at a time; tokenization runs in ``tokenizers``' Rust thread pool
(every core) through its batch API.
"""

from __future__ import annotations

import itertools
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from aigc.config import Config
from aigc.data.clean import CleaningReport, Record, clean_records
from aigc.data.pairs import PAIR_SPLITS, Pair, clean_pairs
from aigc.data.shards import FORMAT_VERSION, MANIFEST, ShardWriter, token_dtype
from aigc.data.sources import SourceFile, fingerprint, iter_records, resolve_sources
from aigc.data.split import assign_split
from aigc.errors import DataError
from aigc.files import file_hash, write_json
from aigc.tokenizer import TARGET_TOKENIZER, UNK, eot_id, tokenizer_for

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
                *([unknown_line(u)] if (u := self.manifest.get("unknown_tokens")) and u["characters"] else []),
                *(f"{name}: {s['documents']:,} documents, {s['tokens']:,} tokens" for name, s in splits.items()
                  if "of" not in s),  # a split's loss mask or lengths: described with the split
                *(["assistant tokens (the loss is taken on these): "
                   + ", ".join(f"{k} {v:,}" for k, v in c["assistant_tokens"].items())] if (c := self.manifest.get("chat")) else []),
                *(["preference pairs: " + ", ".join(f"{k} {v:,}" for k, v in p["pairs"].items())]
                  if (p := self.manifest.get("preference")) else []),
                *([f"audio: {a['levels']} codebook(s) of {a['codebook_size']} log-mel frames, {a['frames']} frames per "
                   f"clip, voices: {', '.join(a['voices']) or 'none'}"] if (a := self.manifest.get("speech")) else []),
                f"wrote {self.data_dir / MANIFEST}",
            ]
        )


def unknown_line(unknown: dict[str, Any]) -> str:
    """What the vocabulary missed, and the ``tokenizer.vocab_size`` that covers the whole corpus."""
    return (f"warning: {unknown['tokens']:,} tokens ({unknown['share']:.2%}) are {UNK}: {unknown['characters']:,} "
            f"characters of the corpus are not in the vocabulary; tokenizer.vocab_size={unknown['covering_size']} "
            "covers them all")


@dataclass
class UnknownTokens:
    """Counts what a closed vocabulary (the char tokenizer's ``vocab_size`` most frequent characters) cannot
    name: every such character becomes ``<|unk|>``, which the model learns to write and cannot be read back.
    (A text that spells ``<|unk|>`` itself counts too, but names no missing character: no warning then.)"""

    tokenizer: Tokenizer
    tokens: int = 0
    total: int = 0
    characters: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.unk = self.tokenizer.token_to_id(UNK)  # None: an open vocabulary (byte-level BPE) misses nothing
        self.vocabulary = self.tokenizer.get_vocab() if self.unk is not None else {}

    def count(self, ids: np.ndarray, texts: list[str]) -> None:
        self.total += len(ids)
        missed = int((ids == self.unk).sum()) if self.unk is not None else 0
        if missed:
            self.tokens += missed
            self.characters.update(c for c in set("".join(texts)) if c not in self.vocabulary)

    def to_dict(self) -> dict[str, Any]:
        size = self.tokenizer.get_vocab_size(with_added_tokens=True)
        return {"tokens": self.tokens, "share": self.tokens / max(self.total, 1), "characters": len(self.characters),
                "covering_size": size + len(self.characters)}


def data_folder(config: Config) -> Path:
    """``<run>/data``, created, with any old manifest removed: until the new one is written, it is not prepared."""
    data_dir = config.run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)
    return data_dir


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


def encode(tokenizer: Tokenizer, texts: list[str], eot: int, dtype: np.dtype) -> tuple[np.ndarray, list[int]]:
    """Ids of ``texts`` each followed by ``eot``, concatenated, and the length of each document."""
    encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    encodings = encode_batch(texts, add_special_tokens=False)
    pieces, lengths = [], []
    separator = np.array([eot], dtype=dtype)
    for encoding in encodings:
        pieces.append(np.asarray(encoding.ids, dtype=dtype))
        pieces.append(separator)
        lengths.append(len(encoding.ids) + 1)
    return (np.concatenate(pieces) if pieces else np.zeros(0, dtype)), lengths


def empty_corpus_error(report: CleaningReport, count: int, keys: str) -> DataError:
    """Why nothing usable was found, with the drop table and the settings (``keys``) to check."""
    reasons = ", ".join(f"{t.count:,} {r}" for r, t in sorted(report.dropped.items())) or "no records at all"
    return DataError(
        f"nothing usable in {count} input file(s) after cleaning ({reasons}).\n{report.table()}\n"
        f"Check data.paths, {keys}, and data.min_chars / data.max_chars."
    )


def shard_writers(data_dir: Path, names: list[str], dtype: np.dtype) -> dict[str, ShardWriter]:
    """One writer per shard name, each writing a hidden temporary file until :func:`finish_shards`."""
    return {name: ShardWriter(data_dir / f".{name}.bin.tmp", dtype) for name in names}


def finish_shards(writers: dict[str, ShardWriter], data_dir: Path) -> dict:
    """Close the shard writers and move their files into place; return the manifest's ``splits``."""
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


def prepared_settings(config: Config) -> dict[str, Any]:
    """The settings prepared data depends on, recorded in the manifest: whether a run's data is up to date."""
    return {"data": config.data.model_dump(mode="json"), "tokenizer": config.tokenizer.model_dump(mode="json")}


def write_manifest(config: Config, tokenizer: Tokenizer, model_vocab: int, splits: dict, sources: list[SourceFile],
                   report: CleaningReport, settings: dict[str, Any] | None = None, **extra: Any) -> PrepareResult:
    """Save the tokenizer, then ``manifest.json`` (written last: its presence means the folder is prepared).

    ``settings``: what the data depends on (default :func:`prepared_settings`); ``extra`` adds kind-specific
    sections (``target_tokenizer``, ``image``).
    """
    data_dir = config.run_dir / "data"
    tokenizer_path = save_tokenizer(config, tokenizer)
    manifest = {
        "format": FORMAT_VERSION,
        "kind": config.data.kind,
        "model_vocab_size": model_vocab,
        "dtype": token_dtype(model_vocab).name,
        "tokenizer": {
            "kind": config.tokenizer.kind,
            "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
            "eot_id": eot_id(tokenizer, config.model.eos_token_ids),
            "file": TOKENIZER_FILE,
            "sha256": file_hash(tokenizer_path),
        },
        "splits": splits,
        "sources": {"files": [s.label for s in sources], "bytes": sum(s.path.stat().st_size for s in sources),
                    "fingerprint": fingerprint(sources)},
        "cleaning": report.to_dict(),
        "config": settings or prepared_settings(config),
        "seed": config.seed,
        **extra,
    }
    write_json(data_dir / "cleaning_report.json", report.to_dict())
    write_json(data_dir / MANIFEST, manifest)
    return PrepareResult(manifest, report, data_dir)


def _documents(sources: list[SourceFile], config: Config, report: CleaningReport) -> Iterator[Record]:
    return clean_records(iter_records(sources, config.data, report), config.data, report)


def prepare_documents(config: Config) -> PrepareResult:
    """Clean, tokenize and shard documents into ``train.bin`` / ``val.bin`` (each document then ``<|endoftext|>``)."""
    sources = resolve_sources(config.data)
    data_dir = data_folder(config)
    keys = "data.field / data.column"
    tokenizer = tokenizer_for(config.tokenizer, (r.text for r in _documents(sources, config, CleaningReport())))
    report = CleaningReport()
    if tokenizer is None:
        list(_documents(sources, config, report))  # fill the report for the message
        raise empty_corpus_error(report, len(sources), keys)
    dtype = token_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
    eot = eot_id(tokenizer, config.model.eos_token_ids)
    fraction = 0.0 if config.data.val_paths else config.data.val_fraction
    writers = shard_writers(data_dir, ["train", "val"], dtype)
    total_bytes = sum(s.path.stat().st_size for s in sources)
    unknown = UnknownTokens(tokenizer)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prepare", delay=2.0, file=sys.stderr,
              disable=not sys.stderr.isatty()) as bar:
        seen_bytes = 0
        for batch in _batches(_documents(sources, config, report)):
            texts = [r.text for r in batch]
            ids, lengths = encode(tokenizer, texts, eot, dtype)
            unknown.count(ids, texts)
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            splits = [r.split or assign_split(r.text, config.seed, fraction) for r in batch]
            for split in ("train", "val"):
                chosen = [i for i, s in enumerate(splits) if s == split]
                if chosen:
                    parts = [ids[offsets[i] : offsets[i + 1]] for i in chosen]
                    writers[split].write(np.concatenate(parts), len(chosen), lengths[chosen[-1]])
            done = report.kept_bytes + sum(t.bytes for t in report.dropped.values())
            bar.update(max(0, min(done, total_bytes) - seen_bytes))
            seen_bytes = max(seen_bytes, min(done, total_bytes))
    if report.kept and writers["val"].documents == 0 and writers["train"].documents > 1 and fraction > 0:
        moved = writers["train"].pop_last()
        writers["val"].write(moved, 1, len(moved))
    splits = finish_shards(writers, data_dir)
    if report.kept == 0:
        _remove(splits, data_dir)
        raise empty_corpus_error(report, len(sources), keys)
    return write_manifest(config, tokenizer, tokenizer.get_vocab_size(with_added_tokens=True), splits, sources, report,
                          unknown_tokens=unknown.to_dict())


def _remove(splits: dict, data_dir: Path) -> None:
    for info in splits.values():
        (data_dir / info["file"]).unlink()


def _sides(pairs: Iterator[Pair], side: str | None) -> Iterator[str]:
    """Each pair's ``side`` ("source" or "target"), or both when None: what a pair tokenizer learns from."""
    for pair in pairs:
        if side in (None, "source"):
            yield pair.source
        if side in (None, "target"):
            yield pair.target


def prepare_pairs(config: Config) -> PrepareResult:
    """Clean, tokenize and shard source/target pairs into ``{train,val,test}.{src,tgt}.bin``.

    With ``tokenizer.separate`` each side has its own tokenizer, and the targets are the target
    tokenizer's ids shifted past the source vocabulary, so both sides live in one id space and one
    model vocabulary.
    """
    sources = resolve_sources(config.data)
    data_dir = data_folder(config)
    keys = "data.source_column / data.target_column (data.source_field / data.target_field for JSONL)"
    separate = config.tokenizer.separate
    if separate and config.tokenizer.path is not None:
        raise DataError("tokenizer.path names one tokenizer; with tokenizer.separate=true both sides' tokenizers "
                        "are trained, so leave tokenizer.path unset (or set tokenizer.separate=false)")

    def texts(side: str | None) -> Iterator[str]:
        return _sides(clean_pairs(sources, config.data, CleaningReport()), side)

    tokenizer = tokenizer_for(config.tokenizer, texts("source" if separate else None))
    target_tokenizer = tokenizer_for(config.tokenizer, texts("target")) if separate and tokenizer else None
    report = CleaningReport()
    if tokenizer is None:
        list(clean_pairs(sources, config.data, report))  # fill the report for the message
        raise empty_corpus_error(report, len(sources), keys)
    offset = tokenizer.get_vocab_size(with_added_tokens=True) if target_tokenizer else 0
    target = target_tokenizer or tokenizer
    model_vocab = offset + target.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(model_vocab)
    eot = eot_id(tokenizer)
    writers = shard_writers(data_dir, [f"{split}.{side}" for split in PAIR_SPLITS for side in ("src", "tgt")], dtype)
    pairs = clean_pairs(sources, config.data, report)
    while batch := list(itertools.islice(pairs, 4096)):
        src_ids, src_lengths = encode(tokenizer, [p.source for p in batch], eot, dtype)
        tgt_ids, tgt_lengths = encode(target, [p.target for p in batch], eot_id(target), np.dtype(np.int64))
        tgt_ids = (tgt_ids + offset).astype(dtype)
        src_offsets, tgt_offsets = np.cumsum([0, *src_lengths]), np.cumsum([0, *tgt_lengths])
        splits = [assign_split(p.source, config.seed, config.data.val_fraction, config.data.test_fraction) for p in batch]
        for split in PAIR_SPLITS:
            chosen = [i for i, s in enumerate(splits) if s == split]
            if chosen:
                for side, ids, offsets, lengths in (("src", src_ids, src_offsets, src_lengths),
                                                    ("tgt", tgt_ids, tgt_offsets, tgt_lengths)):
                    parts = np.concatenate([ids[offsets[i] : offsets[i + 1]] for i in chosen])
                    writers[f"{split}.{side}"].write(parts, len(chosen), lengths[chosen[-1]])
    shard_info = finish_shards(writers, data_dir)
    if report.kept == 0:
        _remove(shard_info, data_dir)
        raise empty_corpus_error(report, len(sources), keys)
    target_path = config.run_dir / TARGET_TOKENIZER
    target_path.unlink(missing_ok=True)
    extra = {}
    if target_tokenizer is not None:
        target_tokenizer.save(str(target_path))
        extra["target_tokenizer"] = {
            "kind": config.tokenizer.kind, "vocab_size": target_tokenizer.get_vocab_size(with_added_tokens=True),
            "offset": offset, "eot_id": offset + eot_id(target_tokenizer), "file": TARGET_TOKENIZER,
            "sha256": file_hash(target_path)}
    return write_manifest(config, tokenizer, model_vocab, shard_info, sources, report, **extra)
