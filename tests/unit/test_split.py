"""The keyed-hash split: the same key and seed always land in the same split, across runs and releases."""

from __future__ import annotations

import pytest

from aigc.data.split import assign_split, keyed_fraction


@pytest.mark.parametrize(("key", "seed", "expected"), [
    ("hello", 0, 0.4323362145837081),
    ("hello", 1, 0.49149726990551845),
    ("hello", -1, 0.9494798874846735),
    ("中文", 1337, 0.4118426140770316),
])
def test_keyed_fraction_is_pinned(key: str, seed: int, expected: float) -> None:
    """The hash of a key under a seed is fixed (keyed BLAKE2b, 8-byte little-endian signed seed, 8-byte digest):
    a prepared data set keeps every document in its split after an upgrade, negative seeds included."""
    assert keyed_fraction(key, seed) == expected


def test_assign_split_cuts_the_hash_range_test_then_val_then_train() -> None:
    """"test" is [0, test_fraction), "val" the next val_fraction, "train" the rest; both fractions 0 is all train."""
    # keyed_fraction("hello", 0) is 0.432... (pinned above)
    assert assign_split("hello", 0, val_fraction=0.0, test_fraction=0.5) == "test"
    assert assign_split("hello", 0, val_fraction=0.5, test_fraction=0.0) == "val"
    assert assign_split("hello", 0, val_fraction=0.2, test_fraction=0.3) == "val"  # 0.3 <= 0.432 < 0.5
    assert assign_split("hello", 0, val_fraction=0.1, test_fraction=0.3) == "train"  # 0.432 >= 0.4
    assert assign_split("hello", 0, val_fraction=0.1, test_fraction=0.0) == "train"
    assert assign_split("hello", 0, val_fraction=0.0, test_fraction=0.0) == "train"
