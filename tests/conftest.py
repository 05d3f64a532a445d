"""For every test: paths to the data in tests/fixtures, and a helper that builds configs for a temp run dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc.config import Config, load_config

pytest_plugins = ("tests.skips",)  # under CI, a skip whose reason is not on its allow-list is a failure

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Training that ends after train.max_steps with the cosine over those steps, whatever the machine's speed:
# the recipes' time budgets (train.schedule=time) make the learning rate, and so every result, depend on wall time.
FIXED_STEPS = ("train.max_minutes=null", "train.schedule=steps")


def fixture(name: str) -> Path:
    """A file of tests/fixtures (slices of public data sets, see its README); missing is an error, never a skip."""
    path = FIXTURES / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the test fixtures are part of the repository")
    return path


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(recipe, key=value, ...)`` -> Config whose run dir is inside ``tmp_path``."""

    def build(recipe: str = "text", *overrides: str) -> Config:
        return load_config(recipe, [f"run.dir={tmp_path / 'run'}", *overrides])

    return build
