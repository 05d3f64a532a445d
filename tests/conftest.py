"""For every test: paths to the data in tests/fixtures, and a helper that builds configs for a temp run dir.

Under pytest-xdist (``make test`` runs one worker per core) each worker gets its share of the cores for torch, and
tests that share a module- or class-scoped fixture (a server, a trained run) are sent to one worker together, so
that the fixture is built once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from aigc.config import Config, load_config

pytest_plugins = ("tests.skips",)  # under CI, a skip whose reason is not on its allow-list is a failure

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Training that ends after train.max_steps with the cosine over those steps, whatever the machine's speed:
# the recipes' time budgets (train.schedule=time) make the learning rate, and so every result, depend on wall time.
FIXED_STEPS = ("train.max_minutes=null", "train.schedule=steps")


def pytest_configure(config: pytest.Config) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # in a worker: its share of the cores, for torch here and in the processes it starts
        share = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(share)
        set_num_threads = torch.set_num_threads
        set_num_threads(share)
        # a run's train.threads in this process stays within the share: two workers' OpenMP pools spinning on the
        # same cores made single tests 7-13x slower (test_seq2seq 10 s -> 68 s)
        torch.set_num_threads = lambda threads: set_num_threads(min(threads, share))


@pytest.hookimpl(wrapper=True)  # around xdist's own hook, which turns the groups into node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]):
    """A test that uses a module- or class-scoped fixture joins its module's xdist group (``--dist loadgroup``)."""
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            definitions = getattr(item, "_fixtureinfo", None)
            scopes = {d.scope for defs in (definitions.name2fixturedefs.values() if definitions else ()) for d in defs}
            if scopes & {"module", "class"}:
                item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    return (yield)


def fixture(name: str) -> Path:
    """A file of tests/fixtures (slices of public data sets, see its README); missing is an error, never a skip."""
    path = FIXTURES / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the test fixtures are part of the repository")
    return path


def lively(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """``model`` with its weight matrices drawn at std 0.5, so that its greedy output depends on the prompt and on
    what it wrote. A tiny model at its initialisation's small weights repeats one token whatever it is given, which
    lets a decoder that ignores its cache, its positions or the source pass a comparison."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(0, 0.5)
    return model


@pytest.fixture
def make_config(tmp_path: Path):
    """``make_config(recipe, key=value, ...)`` -> Config whose run dir is inside ``tmp_path``."""

    def build(recipe: str = "text", *overrides: str) -> Config:
        return load_config(recipe, [f"run.dir={tmp_path / 'run'}", *overrides])

    return build
