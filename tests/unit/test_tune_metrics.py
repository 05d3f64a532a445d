"""tune.metric: refused before any trial when the run would not report it, with the settings that would."""

import pytest

from aigc.config import load_raw, validate_config
from aigc.errors import ConfigError
from aigc.tuning.study import check_study

SPACE = "tune.space={train.lr: {log_float: [1.0e-3, 1.0e-2]}}"


def _check(recipe: str, *overrides: str) -> None:
    raw = load_raw(recipe, [SPACE, *overrides])
    check_study(validate_config(raw), raw)


@pytest.mark.parametrize(("recipe", "overrides"), [
    ("shapes", ["tune.metric=adherence"]),  # the shapes judge reports adherence over every prompt
    ("digits", ["tune.metric=adherence"]),
    ("speech", ["tune.metric=adherence"]),
    ("code", ["tune.metric=parse_rate"]),
    ("translate", ["tune.metric=chrf"]),
])
def test_metrics_the_run_reports_are_accepted(recipe, overrides):
    _check(recipe, *overrides)


@pytest.mark.parametrize(("recipe", "overrides", "message"), [
    ("shapes", ["tune.metric=adherence", "data.builtin=[]", "data.paths=[pictures/]"],
     "needs one built-in source with a judge"),
    ("speech", ["tune.metric=adherence", "data.paths=[clips/]"], "needs data.builtin=[spoken_words] and no data.paths"),
    ("text", ["tune.metric=parse_rate"], "needs eval.task=code"),
    ("code", ["tune.metric=parse_rate", "eval.samples=0"], "needs eval.samples above 0"),
    ("shapes", ["tune.metric=bleu"], "images runs with these settings report val_loss, adherence"),
])
def test_metrics_the_run_would_not_report_are_refused_with_what_they_need(recipe, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _check(recipe, *overrides)
