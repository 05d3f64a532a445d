"""tune.space: choices Optuna cannot store (lists) travel as YAML text and come back as the settings."""

import optuna

from aigc.tuning.space import settings_of, suggest

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
