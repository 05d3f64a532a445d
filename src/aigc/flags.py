"""Command-line flags generated from typed settings, so each default and meaning is written once.

:func:`add_flags` turns every field of a pydantic settings model into ``--field-name`` with the
field's description as help; :func:`given_flags` returns only the flags the user typed (the rest keep
the defaults of whatever the settings are merged into: a run's saved ``generate`` section, or the
model's own defaults). Strings typed on the command line may use ``\\n``, ``\\t`` and ``\\\\`` escapes,
since a shell makes a real newline awkward to type.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from aigc.errors import ConfigError

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
_NONE = ("none", "null", "off")


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` as a newline, a tab and a backslash; any other backslash is kept."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _optional(convert):
    def parse(text: str):
        return None if text.lower() in _NONE else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def flag_name(name: str, field: FieldInfo) -> str:
    """``--field-name``, or the spelling the field names in ``json_schema_extra={"flag": ...}``."""
    return (field.json_schema_extra or {}).get("flag") or f"--{name.replace('_', '-')}"


def _flag_options(field: FieldInfo) -> dict[str, Any]:
    """argparse options (type, nargs, action) for one field: lists take several values, or repeat the flag
    when the field says ``json_schema_extra={"repeat": True}`` (taken as typed, without escapes)."""
    annotation = field.annotation
    args = typing.get_args(annotation)
    nullable = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    if nullable:
        annotation = next(a for a in args if a is not type(None))
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (list, tuple):
        if (field.json_schema_extra or {}).get("repeat"):
            return {"action": "append", "metavar": "STR"}
        return {"nargs": "+", "type": unescape, "metavar": "STR"}
    if origin is typing.Literal:
        return {"choices": list(typing.get_args(annotation))}
    convert = {int: int, float: float, Path: Path}.get(annotation, unescape)
    return {"type": _optional(convert) if nullable else convert, "metavar": annotation.__name__.upper()
            if isinstance(annotation, type) else "VALUE"}


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, settings: type[BaseModel],
              defaults_from: str | None = None, skip: tuple[str, ...] = ()) -> None:
    """One ``--name`` per field of ``settings``; help = the field's description and its default.

    ``defaults_from`` names where defaults come from instead of the model (e.g. "the run's generate
    section"); the model's default is still shown for reference.
    """
    for name, field in settings.model_fields.items():
        if name in skip:
            continue
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None else default
        where = f"{defaults_from}; else {shown}" if defaults_from else shown
        parser.add_argument(flag_name(name, field), dest=name, default=argparse.SUPPRESS,
                            help=f"{field.description or ''} [default: {where}]".replace("%", "%%"),
                            **_flag_options(field))


def given_flags(args: argparse.Namespace, settings: type[BaseModel]) -> dict[str, Any]:
    """The fields of ``settings`` that were given on the command line (flags left out are absent)."""
    return {name: getattr(args, name) for name in settings.model_fields if hasattr(args, name)}


def with_flags(settings: BaseModel, args: argparse.Namespace) -> BaseModel:
    """``settings`` with the flags given in ``args`` applied and validated; a bad value names its flag."""
    model = type(settings)
    given = given_flags(args, model)
    try:
        return model.model_validate({**settings.model_dump(), **given})
    except ValidationError as err:
        def where(loc: tuple) -> str:
            name = str(loc[0]) if loc else ""
            return flag_name(name, model.model_fields[name]) if name in model.model_fields else name or "value"

        raise ConfigError("; ".join(f"{where(p['loc'])}: {p['msg']}" for p in err.errors())) from None
