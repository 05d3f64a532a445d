"""A checkpoint is verified once per process while its files are unchanged, and a changed file is hashed again."""

from __future__ import annotations

import pytest

from aigc import checkpoint as checkpoint_module
from aigc.checkpoint import load_checkpoint, save_checkpoint
from aigc.config import load_config
from aigc.errors import CheckpointError
from aigc.models import build_model


def test_files_are_hashed_once_until_they_change(tmp_path, monkeypatch):
    config = load_config("text", [f"run.dir={tmp_path}", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                                  "model.block_size=8", "model.vocab_size=32"])
    (tmp_path / "tokenizer.json").write_text("{}")
    path = save_checkpoint(tmp_path, 1, config, build_model(config.model).state_dict(), {}, {})
    hashed = []
    real_hash = checkpoint_module.file_hash
    monkeypatch.setattr(checkpoint_module, "file_hash", lambda file: hashed.append(file.name) or real_hash(file))
    load_checkpoint(path)
    first = sorted(hashed)
    assert "model.safetensors" in first
    load_checkpoint(tmp_path)  # the run directory: the same checkpoint, nothing hashed again
    assert sorted(hashed) == first
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt"):
        load_checkpoint(path)
    assert hashed.count("model.safetensors") == 2
