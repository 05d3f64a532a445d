"""Shared fixtures: paths to the shared data sets and a helper that builds configs for a temp run dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc.config import Config, load_config

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(recipe, key=value, ...)`` -> Config whose run dir is inside ``tmp_path``."""

    def build(recipe: str = "text", *overrides: str) -> Config:
        return load_config(recipe, [f"run.dir={tmp_path / 'run'}", *overrides])

    return build
