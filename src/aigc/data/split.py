"""The keyed-hash split: which of train / val / test a document, pair or image belongs to.

A split is a function of the item's key (its text, source side or identity) and the run's seed, so it
is deterministic, needs no second pass, and does not move items around when other files are added.
"""

from __future__ import annotations

import hashlib


def keyed_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) that depends only on ``key`` and ``seed`` (keyed BLAKE2b)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest, "little") / 2**64


def assign_split(key: str, seed: int, val_fraction: float, test_fraction: float = 0.0) -> str:
    """"test" for the first ``test_fraction`` of the hash range, "val" for the next ``val_fraction``, else "train"."""
    if val_fraction <= 0 and test_fraction <= 0:
        return "train"
    value = keyed_fraction(key, seed)
    if value < test_fraction:
        return "test"
    return "val" if value < test_fraction + val_fraction else "train"
