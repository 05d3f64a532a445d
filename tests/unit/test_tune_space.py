"""tune.space: checked before any trial; choices Optuna cannot store (lists) travel as YAML text and come back."""

import optuna
import pytest

from aigc.config import load_raw, validate_config
from aigc.errors import ConfigError
from aigc.tuning.space import check_space, settings_of, suggest

SPACE = {"data.exclude": {"choice": [[], ["*/test/*", "*/tests/*"]]}, "model.n_embd": {"choice": [64, 128]}}


def test_list_choices_are_drawn_as_text_and_read_back_as_lists():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(8):
        trial = study.ask()
        drawn.append(suggest(trial, SPACE))
        study.tell(trial, 0.0)
    assert {tuple(v["data.exclude"]) for v in drawn} == {(), ("*/test/*", "*/tests/*")}
    assert all(isinstance(v["model.n_embd"], int) for v in drawn)
    stored = study.trials[0].params  # what the storage holds: text for the list choice, the number as it is
    assert isinstance(stored["data.exclude"], str) and stored["model.n_embd"] in (64, 128)
    assert settings_of(SPACE, stored) == drawn[0]


def _check(space: str, *overrides: str) -> None:
    raw = load_raw("text", [f"tune.space={space}", *overrides])
    check_space(validate_config(raw), raw)


@pytest.mark.parametrize(("space", "overrides", "message"), [
    ("{train.lr: {float: [0.1, .inf]}}", [], "needs finite ends"),
    ("{train.lr: {float: [true, false]}}", [], "two numbers"),
    ("{model.n_layer: {float: [1, 3]}}", [], "model.n_layer is a whole number: use {int: [low, high]}"),
    ("{train.decay_embeddings: {int: [0, 1]}}", [], "is true or false: use {choice: [true, false]}"),
    ("{model: {choice: [{n_layer: 1}, {n_layer: 2}]}}", [], "model is a section"),
    ("{train.lora: {choice: [{rank: 4}]}}", [], "train.lora is a section"),
    ("{train.max_minutes: {choice: [1, 5]}}", [], "tune.trial_minutes"),
    ("{seed: {int: [1, 3]}}", [], "a lucky draw"),
    ("{recipe: {choice: [a, b]}}", [], "not a setting to tune"),
    ("{model.n_embd: {choice: [30, 31]}}", ["model.n_head=4"], "no choice goes with the recipe's other settings"),
])
def test_spaces_that_cannot_work_are_refused(space, overrides, message):
    with pytest.raises(ConfigError) as err:
        _check(space, *overrides)
    assert message in str(err.value), str(err.value)


def test_numbers_yaml_reads_as_text_are_taken_and_clashing_choices_left_to_their_trials():
    _check("{train.lr: {log_float: [1e-4, 1e-2]}}")  # YAML 1.1 reads 1e-4 (no dot) as text
    _check("{model.n_head: {choice: [4, 5]}}", "model.n_embd=64")  # 5 clashes with the width: pruned in its trial
    _check("{model.n_head: {choice: [4, 64]}}", "model.n_embd=192", "model.position=rope")  # odd head size: same
