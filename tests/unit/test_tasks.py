"""What a run's task decides for training (aigc.tasks): model settings, samplers, data-fixed init, and the registry."""

from __future__ import annotations

import pytest
import torch

from aigc import prepare
from aigc.config import load_config
from aigc.data.loader import WindowSampler
from aigc.data.shards import read_manifest
from aigc.errors import ConfigError, TrainingError
from aigc.models import build_model
from aigc.tasks import task_for

PALETTE = [[0, 0, 0], [255, 255, 255], [255, 0, 0]]
SMALL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16"]


def _manifest(vocab: int = 50, **extra) -> dict:
    return {"tokenizer": {"vocab_size": vocab}, **extra}


def model_config_for(config, manifest):
    return task_for(config).model_config(config, manifest)


def init_from_data(config, model, manifest):
    task_for(config).init_model(model, manifest)


def test_vocab_size_comes_from_the_data_unless_given(tmp_path):
    config = load_config("text", [f"run.dir={tmp_path}"])
    assert model_config_for(config, _manifest()).model.vocab_size == 50
    assert model_config_for(config, _manifest(model_vocab_size=64)).model.vocab_size == 64  # padded for the model
    given = load_config("text", [f"run.dir={tmp_path}", "model.vocab_size=80"])
    assert model_config_for(given, _manifest()).model.vocab_size == 80
    small = load_config("text", [f"run.dir={tmp_path}", "model.vocab_size=40"])
    with pytest.raises(TrainingError, match="model.vocab_size=40 is below the data's 50 tokens"):
        model_config_for(small, _manifest())


def test_image_settings_come_from_the_data(tmp_path):
    image = {"size": 4, "palette": PALETTE, "prefix": 5}
    config = load_config("digits", [f"run.dir={tmp_path}", "model.block_size=20"])
    model = model_config_for(config, _manifest(image=image)).model
    assert (model.image_size, model.image_colors, model.image_prefix) == (4, 3, 5)
    short = load_config("digits", [f"run.dir={tmp_path}", "model.block_size=19"])
    assert model_config_for(short, _manifest(image=image)).model.block_size == 20  # a caption and its 16 pixels


@pytest.mark.parametrize(("recipe", "model_kind", "message"), [
    ("text", "seq2seq", r"model.kind=seq2seq cannot train on documents \(data.kind=text\); use model.kind=gpt"),
    ("translate", "gpt", r"model.kind=gpt cannot train on source/target pairs \(data.kind=pairs\); use model.kind=seq2seq"),
    ("digits", "seq2seq", r"model.kind=seq2seq cannot train on captioned images \(data.kind=images\)"),
])
def test_model_kind_must_suit_the_task(tmp_path, recipe, model_kind, message):
    config = load_config(recipe, [f"run.dir={tmp_path}", f"model.kind={model_kind}"])
    with pytest.raises(TrainingError, match=message):
        model_config_for(config, _manifest())


def test_an_unknown_kind_of_run_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="data.kind='video' is not a kind of run aigc knows; use one of text, pairs, "
                                          "images, chat, speech"):
        task_for(load_config("text", [f"run.dir={tmp_path}", "data.kind=video"]))


def test_image_model_gets_the_datas_palette(tmp_path):
    image = {"size": 4, "palette": PALETTE, "prefix": 5}
    manifest = _manifest(image=image)
    config = model_config_for(load_config("digits", [f"run.dir={tmp_path}", "model.block_size=20", *SMALL]), manifest)
    model = build_model(config.model, task_for(config).model_extras())
    init_from_data(config, model, manifest)
    assert model.extras.palette.tolist() == PALETTE
    text_config = model_config_for(load_config("text", [f"run.dir={tmp_path}", *SMALL]), _manifest())
    text = build_model(text_config.model)
    before = {name: value.clone() for name, value in text.state_dict().items()}
    init_from_data(text_config, text, _manifest())  # nothing to copy
    assert all(torch.equal(value, before[name]) for name, value in text.state_dict().items())


def test_text_samplers_and_a_val_split_too_small_to_evaluate(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("".join(f"line {i} of a small text to train on\n\n" for i in range(200)))
    config = load_config("text", [f"run.dir={tmp_path / 'run'}", f"data.paths=[{corpus}]", "model.block_size=8",
                                  "train.batch_size=2", "data.val_fraction=0.2"])
    prepare(config)
    manifest = read_manifest(config.run_dir / "data")
    config = model_config_for(config, manifest)
    train, val = task_for(config).samplers(config, manifest, 0, 1)
    assert isinstance(train, WindowSampler) and isinstance(val, WindowSampler)
    wide = config.model_copy(update={"model": config.model.model_copy(update={"block_size": len(val.tokens) - 1})})
    assert task_for(wide).samplers(wide, manifest, 0, 1)[1] is None
