"""Token shards: flat files of token ids that ``numpy.memmap`` opens without loading, plus ``manifest.json``.

Layout of a prepared data folder::

    data/train.bin   data/val.bin    uint16 ids when the vocabulary fits, else uint32;
                                     each document is followed by <|endoftext|>
    data/manifest.json               dtype, counts, tokenizer hash, sources, cleaning report

Documents go to train or val by a keyed hash of their text (:mod:`aigc.data.split`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aigc.errors import DataError
from aigc.files import read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of the vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends documents' token ids to one ``.bin`` file, remembering where the last document began."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path = path
        self.dtype = dtype
        self.tokens = 0
        self.documents = 0
        self.last_start = 0
        self._handle = path.open("wb")

    def write(self, ids: np.ndarray, documents: int, last_length: int) -> None:
        """Append ``documents`` documents (``ids``, separators included); the last one is ``last_length`` long."""
        if documents == 0:
            return
        ids.astype(self.dtype, copy=False).tofile(self._handle)
        self.tokens += len(ids)
        self.documents += documents
        self.last_start = self.tokens - last_length

    def pop_last(self) -> np.ndarray:
        """Remove the last document from the file and return its ids (used to seed an empty val split)."""
        self._handle.flush()
        ids = np.fromfile(self.path, dtype=self.dtype, offset=self.last_start * self.dtype.itemsize)
        self._handle.truncate(self.last_start * self.dtype.itemsize)
        self._handle.seek(0, 2)
        self.tokens = self.last_start
        self.documents -= 1
        return ids

    def close(self) -> dict[str, Any]:
        self._handle.close()
        return {"file": self.path.name, "tokens": self.tokens, "documents": self.documents, "dtype": self.dtype.name}


def read_manifest(data_dir: Path) -> dict[str, Any]:
    path = data_dir / MANIFEST
    if not path.is_file():
        raise DataError(f"no prepared data in {data_dir} (missing {MANIFEST}); run `aigc prepare` with the same recipe first")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path} has format {manifest.get('format')}, this aigc reads {FORMAT_VERSION}; re-run `aigc prepare`")
    return manifest


def open_split(data_dir: Path, split: str, manifest: dict[str, Any] | None = None) -> np.memmap | np.ndarray:
    """Token ids of a split as a read-only memmap, checked against the manifest's count."""
    manifest = manifest or read_manifest(data_dir)
    info = manifest["splits"][split]
    path = data_dir / info["file"]
    dtype = np.dtype(info.get("dtype", manifest["dtype"]))  # token ids, or a split's own (a loss mask's uint8)
    expected = info["tokens"] * dtype.itemsize
    if not path.is_file() or path.stat().st_size != expected:
        found = path.stat().st_size if path.is_file() else "no file"
        raise DataError(f"{path} does not match {MANIFEST} ({found} bytes, expected {expected}); re-run `aigc prepare`")
    if info["tokens"] == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
