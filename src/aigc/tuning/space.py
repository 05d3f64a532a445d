"""The search space of ``aigc tune``: ``tune.space`` checked before any trial, and turned into Optuna suggestions.

Each entry maps a dotted config key to one distribution::

    train.lr:      {log_float: [1.0e-4, 1.0e-2]}
    train.dropout: {float: [0.0, 0.3]}
    model.n_layer: {int: [2, 6]}
    model.n_embd:  {choice: [64, 128, 192]}

A key that is not a setting, a value of the wrong type, an empty range or an unknown distribution is a
:class:`~aigc.errors.ConfigError` that names the entry, raised before the study starts.
"""

from __future__ import annotations

import copy
import functools
import math
import typing
from typing import Any

import yaml

from aigc.config import Config, apply_override, is_section, setting_annotation, validate_config
from aigc.errors import CombinationError, ConfigError
from aigc.tasks import registry

KINDS = ("log_float", "float", "int", "choice")


def _number(value: Any) -> Any:
    """``value`` as a number where it is one: YAML reads ``1e-4`` (no dot) as text, so numeric text is taken too."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _values(key: str, spec: dict[str, list[Any]]) -> tuple[str, list[Any]]:
    """The distribution's kind and its values (the ends of a range, or the choices), checked alone; numbers
    written as text are numbers here, so two spellings of one space are one space."""
    if len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"tune.space.{key}: give one of {', '.join(KINDS)}, e.g. {{log_float: [1.0e-4, 1.0e-2]}}")
    kind, values = next(iter(spec.items()))
    if kind == "choice":
        if not values:
            raise ConfigError(f"tune.space.{key}: choice needs a non-empty list of values")
        return kind, [_number(v) for v in values] if _setting_types(key) & {int, float} else values
    values = [_number(v) for v in values]
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"tune.space.{key}: {kind} needs [low, high], two numbers (got {values!r})")
    low, high = values
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"tune.space.{key}: the range [{low}, {high}] needs finite ends")
    if kind == "int" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"tune.space.{key}: int needs whole numbers, not {values}")
    if low >= high:
        raise ConfigError(f"tune.space.{key}: the range [{low}, {high}] is empty; give low < high")
    if kind == "log_float" and low <= 0:
        raise ConfigError(f"tune.space.{key}: log_float needs a positive low end, not {low}")
    return kind, values


def _check_key(key: str, kind: str) -> None:
    """The key names one setting a trial may change, and the distribution draws values of its type."""
    if key.split(".")[0] in ("run", "tune") or key == "train.max_minutes":
        raise ConfigError(f"tune.space.{key}: run.*, tune.* and train.max_minutes (tune.trial_minutes) are the "
                          "study's own settings, not a trial's")
    if key in ("seed", "recipe"):
        why = "a study over seeds picks a lucky draw, not better settings" if key == "seed" else "it names the study"
        raise ConfigError(f"tune.space.{key}: not a setting to tune ({why}); set it outside the space")
    if is_section(key):
        raise ConfigError(f"tune.space.{key} is a section: give one of its settings, e.g. {key}.<name>")
    types = _setting_types(key)  # none for a key that is not a setting: validating a value names the valid keys
    if bool in types and kind != "choice":
        raise ConfigError(f"tune.space.{key} is true or false: use {{choice: [true, false]}}")
    if kind in ("float", "log_float") and int in types and float not in types:
        raise ConfigError(f"tune.space.{key} is a whole number: use {{int: [low, high]}}")


def _setting_types(key: str) -> set[Any]:
    """The types the setting at ``key`` takes (``{int, NoneType}`` for ``int | None``) in a run of any kind (a
    kind's own setting is one kind's; the study's recipe decides which); empty for no setting."""
    annotations = {setting_annotation(key, kind) for kind in registry.KINDS} - {None}
    return {t for annotation in annotations for t in (set(typing.get_args(annotation)) or {annotation})}


def check_space(config: Config, raw: dict[str, Any]) -> None:
    """Every entry of ``config.tune.space`` is a well-formed distribution over a setting a trial may change, of
    that setting's type: each of its end values (every choice) set alone into the recipe ``raw`` must validate,
    or the error names the entry. A value that only clashes with the recipe's other settings is left to the
    trial that draws it (pruned), unless every choice of the space's only key clashes."""
    if not config.tune.space:
        raise ConfigError("tune.space is empty: name the settings to search, e.g. "
                          "tune.space={train.lr: {log_float: [1.0e-4, 1.0e-2]}}")
    for key, spec in config.tune.space.items():
        kind, values = _values(key, spec)
        _check_key(key, kind)
        clashes = []
        for value in values:
            try:
                validate_config(with_values(raw, {key: value}))
            except CombinationError as err:  # fine alone, not with the recipe's other values
                clashes.append(err.reason)
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key} = {value!r} is not a valid setting:\n{err}") from None
        # with other keys in the space, a draw of theirs may make a clashing value fit: its trial decides
        if kind == "choice" and len(clashes) == len(values) and len(config.tune.space) == 1:
            raise ConfigError(f"tune.space.{key}: no choice goes with the recipe's other settings, so every trial "
                              f"would be pruned ({clashes[0]}); put the other setting in the space or change it")


def normalised_space(space: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
    """The space as its distributions read it (``1e-4`` and ``1.0e-4`` alike): what identifies a study."""
    return {key: dict([_values(key, spec)]) for key, spec in space.items()}


def baseline_params(config: Config) -> dict[str, Any]:
    """The recipe's own values of the space's keys, as Optuna params (what ``suggest`` would have drawn), or a
    ConfigError naming a value the space does not hold: a baseline trial must be a point of the search."""
    params = {}
    for key, spec in config.tune.space.items():
        kind, bounds = _values(key, spec)
        value = functools.reduce(getattr, key.split("."), config)
        if kind == "choice":
            inside = value in bounds
            value = _choice_labels(bounds)[bounds.index(value)] if inside else value
        else:
            inside = isinstance(value, (int, float)) and bounds[0] <= value <= bounds[1]
        if not inside:
            raise ConfigError(f"tune.baseline: the recipe's {key}={value!r} lies outside tune.space.{key} "
                              f"({kind}: {bounds}); widen the space or set tune.baseline=false")
        params[key] = value
    return params


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of the recipe mapping ``raw`` with ``values`` set at their dotted keys."""
    trial = copy.deepcopy(raw)
    for key, value in values.items():
        apply_override(trial, f"{key}={_yaml(value)}")
    return trial


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def suggest(trial, space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    """The values an Optuna ``trial`` draws from the space, by key."""
    values = {}
    for key, spec in space.items():
        kind, bounds = _values(key, spec)
        if kind == "choice":
            values[key] = trial.suggest_categorical(key, _choice_labels(bounds))
        elif kind == "int":
            values[key] = trial.suggest_int(key, *bounds)
        else:
            values[key] = trial.suggest_float(key, float(bounds[0]), float(bounds[1]), log=kind == "log_float")
    return settings_of(space, values)


def settings_of(space: dict[str, dict[str, list[Any]]], params: dict[str, Any]) -> dict[str, Any]:
    """The setting values of a trial's Optuna ``params``: a choice among lists or mappings (which Optuna cannot
    store) is drawn as its YAML text, read back here."""
    settings = dict(params)
    for key, spec in space.items():
        kind, bounds = _values(key, spec)
        if kind == "choice" and key in params and not all(_scalar(b) for b in bounds):
            settings[key] = yaml.safe_load(params[key])
    return settings


def _choice_labels(choices: list[Any]) -> list[Any]:
    """The choices as Optuna takes them: scalars as they are, or all as YAML text when one is a list or mapping."""
    return choices if all(_scalar(c) for c in choices) else [_yaml(c) for c in choices]


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
