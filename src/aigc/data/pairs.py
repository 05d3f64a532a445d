"""Source/target pairs for the encoder-decoder: reading, cleaning, splitting, sharding, batching.

Pairs come from CSV/TSV (two columns, by index or header name; extra columns such as an attribution
are never read into the model) or JSONL (two fields). Both sides are normalised like documents; a row
with a missing or empty side, or more columns than the first row, is skipped and counted. The split
(train/val/test) is a keyed hash of the source side, so it is deterministic and a source sentence is
never in two splits.

Shards: ``{split}.src.bin`` and ``{split}.tgt.bin``, each sequence followed by ``<|endoftext|>``.
Batches take pairs of similar length (consecutive in length order), so little compute goes to padding.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from aigc.config import DataConfig
from aigc.data.clean import CleaningReport, normalize
from aigc.data.shards import open_split
from aigc.data.sources import SourceFile, json_objects
from aigc.errors import DataError, TrainingError

PAIR_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    origin: str


def _column(header: list[str] | None, column: int | str, path: str, key: str) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise DataError(f"{path}:1: no column '{column}' ({key}); the header has: {', '.join(header or []) or 'nothing'}")
    return header.index(column)


def _delimited_pairs(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Pair]:
    delimiter = "\t" if source.path.suffix.lower() == ".tsv" else ","
    csv.field_size_limit(sys.maxsize)
    named = isinstance(config.source_column, str) or isinstance(config.target_column, str)
    with source.path.open("r", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        header = next(reader, None) if named else None
        src = _column(header, config.source_column, source.label, "data.source_column")
        tgt = _column(header, config.target_column, source.label, "data.target_column")
        width = len(header) if header else None
        try:
            for row in reader:
                if not row:
                    continue
                where = f"{source.label}:{reader.line_num}"
                if width is None:
                    width = len(row)
                    if max(src, tgt) >= width:
                        raise DataError(f"{where}: the row has {width} columns (numbered from 0), so there is no column "
                                        f"{max(src, tgt)}; set data.source_column and data.target_column")
                if len(row) > width:
                    report.drop("extra_columns", where, 0, f"{len(row)} columns, expected {width}")
                elif max(src, tgt) >= len(row):
                    report.drop("missing_side", where, 0, f"{len(row)} columns")
                else:
                    yield Pair(row[src], row[tgt], where)
        except UnicodeDecodeError:
            report.drop("invalid_utf8", f"{source.label}:{reader.line_num + 1}", 0, "rest of file skipped")


def _jsonl_pairs(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Pair]:
    for obj, where, size in json_objects(source, report):
        values = [obj.get(k) if isinstance(obj, dict) else None for k in (config.source_field, config.target_field)]
        if not all(isinstance(v, str) for v in values):
            report.drop("missing_side", where, size, f"needs string fields '{config.source_field}' and '{config.target_field}'")
            continue
        yield Pair(values[0], values[1], where)


def read_pairs(source: SourceFile, config: DataConfig, report: CleaningReport) -> Iterator[Pair]:
    """The raw (uncleaned) pairs of one file; rows without two sides are tallied in ``report``."""
    suffix = source.path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _jsonl_pairs(source, config, report)
    if suffix in (".tsv", ".csv"):
        return _delimited_pairs(source, config, report)
    raise DataError(f"{source.label}: pairs are read from .tsv, .csv or .jsonl files, not '{suffix or 'no suffix'}'")


def clean_pairs(sources: list[SourceFile], config: DataConfig, report: CleaningReport) -> Iterator[Pair]:
    """Normalised pairs that pass every filter, sides swapped when ``data.reverse``; drops tallied in ``report``."""
    seen: set[bytes] = set()
    for source in sources:
        for pair in read_pairs(source, config, report):
            src, tgt = normalize(pair.source).strip(), normalize(pair.target).strip()
            size = len(src.encode()) + len(tgt.encode())
            if not src or not tgt:
                report.drop("empty_side", pair.origin, size)
            elif min(len(src), len(tgt)) < config.min_chars:
                report.drop("too_short", pair.origin, size)
            elif max(len(src), len(tgt)) > config.max_chars:
                report.drop("too_long", pair.origin, size)
            else:
                digest = hashlib.blake2b(f"{src}\0{tgt}".encode(), digest_size=16).digest()
                if digest in seen:
                    report.drop("duplicate", pair.origin, size)
                    continue
                seen.add(digest)
                report.keep(size)
                yield Pair(tgt, src, pair.origin) if config.reverse else Pair(src, tgt, pair.origin)


def read_sequences(src: np.ndarray, tgt: np.ndarray, eot: int, target_eot: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split the flat shards back into (source ids, target ids) pairs, each ending with its side's end token."""
    target_eot = eot if target_eot is None else target_eot
    src_ends, tgt_ends = np.flatnonzero(src == eot) + 1, np.flatnonzero(tgt == target_eot) + 1
    if len(src_ends) != len(tgt_ends):
        raise DataError("source and target shards hold different numbers of sequences; re-run `aigc prepare`")
    return list(zip(np.split(src, src_ends[:-1]), np.split(tgt, tgt_ends[:-1])))


def target_start(manifest: dict) -> int:
    """The id the decoder starts from and ends with: the target tokenizer's end token (offset), else the joint one."""
    target = manifest.get("target_tokenizer")
    return target["eot_id"] if target else manifest["tokenizer"]["eot_id"]


def split_pairs(data_dir, manifest: dict, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (source ids, target ids) pairs of one split of prepared pairs or images; [] when it is empty."""
    if not manifest["splits"].get(f"{split}.src", {}).get("documents"):
        return []
    src, tgt = open_split(data_dir, f"{split}.src", manifest), open_split(data_dir, f"{split}.tgt", manifest)
    return read_sequences(src, tgt, manifest["tokenizer"]["eot_id"], target_start(manifest))


class PairSampler:
    """Micro-batches ((src, src_mask, tgt_in), tgt_out) of pairs of similar length.

    Like :class:`~aigc.data.loader.WindowSampler`, the pairs of a step depend only on (seed, step):
    each micro-batch is ``batch_size`` pairs consecutive in length order from a random start.
    Sequences are cut to ``block_size``; targets are -1 on padding (ignored by the loss).
    """

    def __init__(self, pairs, eot: int, block_size: int, batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world: int = 1, split: str = "train"):
        if len(pairs) < batch_size:
            raise TrainingError(f"the {split} split has {len(pairs)} pairs, fewer than train.batch_size={batch_size}; "
                                "add data or lower train.batch_size")
        if grad_accum % world:
            raise TrainingError(f"train.grad_accum ({grad_accum}) must be a multiple of the number of processes ({world})")
        lengths = np.array([len(s) + len(t) for s, t in pairs])
        self.pairs = [pairs[i] for i in np.argsort(lengths, kind="stable")]
        self.eot, self.block_size, self.batch_size, self.grad_accum = eot, block_size, batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world

    def collate(self, chosen) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        src = [s[: self.block_size] for s, _ in chosen]
        tgt = [t[: self.block_size] for _, t in chosen]
        width_s, width_t = max(map(len, src)), max(map(len, tgt))
        src_ids = torch.zeros(len(chosen), width_s, dtype=torch.long)
        src_mask = torch.zeros(len(chosen), width_s, dtype=torch.bool)
        tgt_in = torch.zeros(len(chosen), width_t, dtype=torch.long)
        tgt_out = torch.full((len(chosen), width_t), -1, dtype=torch.long)
        for row, (s, t) in enumerate(zip(src, tgt)):
            src_ids[row, : len(s)] = torch.from_numpy(s.astype(np.int64))
            src_mask[row, : len(s)] = True
            ids = torch.from_numpy(t.astype(np.int64))
            tgt_in[row, 0] = self.eot  # the decoder starts from <|endoftext|>
            tgt_in[row, 1 : len(t)] = ids[:-1]
            tgt_out[row, : len(t)] = ids
        return (src_ids, src_mask, tgt_in), tgt_out

    def step_batches(self, step: int):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, len(self.pairs) - self.batch_size + 1, (self.grad_accum,), generator=generator)
        return [self.collate(self.pairs[s : s + self.batch_size]) for s in starts[self.rank :: self.world].tolist()]

    def eval_batches(self, count: int):
        starts = np.linspace(0, len(self.pairs) - self.batch_size, count).astype(int)
        return [self.collate(self.pairs[s : s + self.batch_size]) for s in starts[self.rank :: self.world]]
