"""The machinery under every config dataclass: typed parsing, unknown-key errors, overrides.

A config section is a plain dataclass. :func:`dataclass_from_dict` builds one from a
mapping: every key is checked (an unknown key is an error that names the valid keys), every
value is checked against the field's annotation (and coerced where that is safe), and the
dataclass's ``validate()`` runs last. :func:`setting` attaches a help text (and choices)
to a field, from which command-line flags are derived (:mod:`ecar.methods.registry`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Sequence

import yaml

from ecar.errors import ConfigError

__all__ = ["ConfigError", "check_choice", "dataclass_from_dict", "field_names", "parse_override", "setting"]


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None,
            metavar: str | None = None) -> Any:
    """A dataclass field with a help text (and optional choices) for derived CLI flags."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "metavar": metavar}
    return dataclasses.field(default=default, metadata=meta)


def check_choice(where: str, value: Any, valid: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise ConfigError(f"{where}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def dataclass_from_dict(cls: type, data: dict | None, where: str, base: Any = None,
                        owner: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, starting from ``base`` (or the defaults).

    Unknown keys raise :class:`ConfigError` listing the valid keys of the section
    (``owner``, e.g. ``" for method 'dit'"``, is added to that message). The dataclass's
    ``validate()``, if any, runs after the values are set.
    """
    obj = dataclasses.replace(base) if base is not None else cls()
    if data is None:
        return obj
    if not isinstance(data, dict):
        raise ConfigError(f"section '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown key '{where}.{key}'{owner}. Valid keys of '{where}': {', '.join(names)}"
            )
        setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=3e-4'`` -> (['train', 'lr'], 0.0003). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key '{key}' must look like section.key (e.g. train.lr)")
    parsed = yaml.safe_load(value) if value.strip() != "" else None
    if isinstance(parsed, str) and parsed.lower() in ("none", "null"):
        parsed = None
    return parts, parsed
