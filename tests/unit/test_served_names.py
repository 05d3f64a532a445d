"""The model ids of aigc serve: folder names made unique, or the names asked for with NAME=RUN_DIR."""

from __future__ import annotations

from pathlib import Path

import pytest

from aigc.errors import ConfigError
from aigc.serve.server import model_ids, named_runs


def test_names_asked_for_win_and_folder_names_stay_unique(tmp_path):
    odd = tmp_path / "odd=name"
    odd.mkdir()
    paths, names = named_runs(["sql=runs/a/lora", "runs/b/lora", "runs/c/lora", str(odd), "lora=runs/d"])
    assert names == ["sql", None, None, None, "lora"] and paths[3] == odd  # an existing path keeps its '='
    assert model_ids(paths, names) == ["sql", "lora-1", "lora-2", "odd=name", "lora"]
    assert model_ids([Path("x/code"), Path("y/text")]) == ["code", "text"]


@pytest.mark.parametrize("entries", [["=runs/a"], ["a/b=runs/a"], ["name="]])
def test_a_bad_name_is_a_clear_error(entries):
    with pytest.raises(ConfigError, match="NAME=RUN_DIR"):
        named_runs(entries)


def test_one_name_for_two_runs_is_refused():
    with pytest.raises(ConfigError, match="given to two runs"):
        model_ids([Path("a"), Path("b")], ["same", "same"])
