"""Each kind of run owns its settings and its model extras: the ``data`` section is the kind's, and so are the
settings it adds to ``train``, ``eval`` and ``generate``; ``--help`` lists the kind asked for, and runs saved
before either change still load."""

from __future__ import annotations

import pytest
import torch

from aigc.checkpoint import load_checkpoint, save_checkpoint
from aigc.cli import main
from aigc.config import load_config, validate_config
from aigc.errors import ConfigError
from aigc.models import build_model
from aigc.tasks import task_for
from aigc.tasks.images.model import PixelPositions
from aigc.tasks.images.settings import ImagesData
from aigc.tasks.pairs.settings import PairsData

SMALL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=20"]


def test_the_data_section_is_the_kinds_own():
    assert isinstance(load_config("digits").data, ImagesData)
    assert isinstance(load_config("text", ["data.kind=pairs", "data.reverse=true"]).data, PairsData)
    with pytest.raises(ConfigError, match=r"unknown key 'data.colors'.*\(data.kind=text; data.colors is a setting of "
                                          r"images runs\)"):
        load_config("text", ["data.colors=8"])
    with pytest.raises(ConfigError, match=r"unknown key 'data.max_seconds'.*a setting of speech runs"):
        load_config("digits", ["data.max_seconds=2"])
    with pytest.raises(ConfigError, match="data.builtin"):  # each kind lists its own built-in sources
        load_config("text", ["data.builtin=[digits]"])
    with pytest.raises(ConfigError, match="data.kind='video' is not a kind of run aigc knows; use one of text, pairs"):
        load_config("text", ["data.kind=video"])


def test_a_kinds_train_eval_and_generate_settings_are_its_own():
    assert load_config("translate").generate.beams == 4 and load_config("digits").train.condition_dropout == 0.1
    assert load_config("speech").generate.voice is None and load_config("code").eval.code_prompt == "docstring"
    for key, owners in [("generate.beams=2", "pairs"), ("generate.guidance=2", "images and speech"),
                        ("train.condition_dropout=0.1", "images and speech"), ("eval.execute=true", "chat and preference"),
                        ("eval.max_pairs=5", "pairs")]:
        with pytest.raises(ConfigError, match=rf"unknown key '{key.split('=')[0]}'.*\(data.kind=text; .* is a setting "
                                              rf"of {owners} runs\)"):
            load_config("text", [key])
    with pytest.raises(ConfigError, match="a setting of text, chat and preference runs"):
        load_config("translate", ["eval.task=code"])


def test_a_run_saved_with_every_kinds_data_settings_still_loads():
    """Saved configs held every kind's data settings at their defaults; another kind's non-default value is refused."""
    saved = load_config("text").model_dump(mode="json")
    saved["data"] |= {"image_size": 8, "palette": "grey", "colors": 16, "max_seconds": 1.0, "codebook_size": 256,
                      "codebooks": 1, "source_column": 0, "reverse": False, "test_fraction": 0.0}
    saved["generate"] |= {"beams": 1, "length_penalty": 1.0, "no_repeat_ngram": 0, "guidance": 1.0, "voice": None,
                          "speed": 1.0}
    saved["eval"] |= {"max_pairs": 1000, "samples_per_prompt": 16, "execute": False}
    saved["train"] |= {"condition_dropout": 0.0}
    assert validate_config(saved) == load_config("text")
    for section, key, value in [("data", "colors", 8), ("generate", "beams", 4)]:
        with pytest.raises(ConfigError, match=f"{section}.{key}"):
            validate_config(saved | {section: saved[section] | {key: value}})


def test_help_lists_the_data_settings_of_the_kind_asked_for(capsys):
    with pytest.raises(SystemExit):
        main(["prepare", "digits", "--help"])
    images = capsys.readouterr().out
    assert "data.image_size" in images and "data.max_seconds" not in images and "data.source_column" not in images
    with pytest.raises(SystemExit):
        main(["prepare", "data.kind=speech", "--help"])
    assert "data.max_seconds" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    every = capsys.readouterr().out
    assert "data.image_size (images)" in every and "data.max_seconds (speech)" in every
    assert "generate.guidance (images, speech)" in every and "eval.max_pairs (pairs)" in every
    with pytest.raises(SystemExit):
        main(["train", "translate", "--help"])
    pairs = capsys.readouterr().out
    assert "generate.beams" in pairs and "generate.guidance" not in pairs and "eval.code_prompt" not in pairs


def test_help_shows_the_recipe_s_own_values_beside_the_defaults(capsys):
    """`aigc prepare text --help` says what the text recipe uses, not only the library's defaults it overrides."""
    with pytest.raises(SystemExit):
        main(["prepare", "text", "--help"])
    text = capsys.readouterr().out
    assert "[text recipe: char; default: bpe]" in text and "[text recipe: paragraph; default: file]" in text
    beta1 = next(line for line in text.splitlines() if line.strip().startswith("train.beta1 "))
    assert beta1.endswith(" [0.9]")  # a value the recipe keeps: the default alone


def test_a_checkpoint_saved_before_the_extras_were_a_module_loads(tmp_path, capsys):
    """Pixel positions and the palette were the GPT's own tensors (``image_rows.weight``, ``palette``); they are now
    the kind's module (``extras.image_rows.weight``): an older checkpoint loads with the same logits."""
    config = load_config("digits", [f"run.dir={tmp_path}", *SMALL, "model.vocab_size=30", "model.image_size=4",
                                    "model.image_colors=6", "model.image_prefix=5"])
    torch.manual_seed(0)
    assert task_for(config).model_extras() is PixelPositions
    built = build_model(config.model, PixelPositions).eval()
    built.extras.palette.copy_(torch.arange(18, dtype=torch.uint8).view(6, 3))
    old_names = {name.removeprefix("extras."): tensor for name, tensor in built.state_dict().items()}
    assert "image_rows.weight" in old_names and "palette" in old_names
    (tmp_path / "tokenizer.json").write_text("{}")
    path = save_checkpoint(tmp_path, 1, config, old_names, {}, {})
    loaded = load_checkpoint(path).load_model(extras=PixelPositions)
    ids = torch.arange(12)[None] % 30
    assert torch.equal(loaded(ids), built(ids)) and torch.equal(loaded.extras.palette, built.extras.palette)
    assert main(["generate", str(tmp_path), "--beams", "2", "--prompt", "3"]) != 0  # refused, not ignored
    assert "--beams is a setting of pairs runs; " in capsys.readouterr().err
