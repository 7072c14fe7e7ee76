"""The registry of methods: names → methods, model entries → their method, settings → flags.

Everything outside :mod:`ecar.methods` finds a model's method here (:func:`method_of`) and
uses it through the :class:`~ecar.methods.base.Method` interface. Adding a method is one
import and one entry in :data:`METHODS` (docs/DESIGN.md, "Adding a method").
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ecar.errors import ConfigError, shown
from ecar.methods.ar import AR_METHOD
from ecar.methods.base import Method
from ecar.methods.dit import DIT
from ecar.methods.ecar import ECAR_METHOD, FLOWAR_METHOD
from ecar.methods.mar import MAR_METHOD
from ecar.methods.xar import XAR_METHOD
from ecar.samplers import SampleConfig
from ecar.schema import comma_list, dataclass_from_dict, field_names, parse_override

__all__ = ["DEFAULT_MODEL", "METHODS", "SamplerFlag", "apply_sample_overrides", "drafted_methods", "flag_overrides",
           "method_named", "method_of", "model_names", "resolve_model_config",
           "resolve_sample_config", "sampler_flags"]

METHODS: dict[str, Method[Any, Any]] = {m.name: m for m in (DIT, ECAR_METHOD, FLOWAR_METHOD, MAR_METHOD, AR_METHOD, XAR_METHOD)}
"""Every registered method by name (the order of CLI choices and parametrised tests)."""

DEFAULT_MODEL = "dit-tiny"
"""``model.name`` of a recipe that names none."""


def _check_registry() -> None:
    seen: dict[str, str] = {}
    for m in METHODS.values():
        for entry in m.entries:
            if entry in seen:
                raise RuntimeError(f"model entry '{entry}' is registered by methods {seen[entry]} and {m.name}")
            seen[entry] = m.name


_check_registry()


def model_names(method: str | None = None) -> list[str]:
    """Registered model entries (of one method, or of all)."""
    return [n for m in METHODS.values() if method in (None, m.name) for n in m.entries]


def drafted_methods() -> list[str]:
    """Names of the methods that declare a :class:`~ecar.methods.base.Drafting` (can be drafted)."""
    return [m.name for m in METHODS.values() if m.drafting is not None]


def method_named(name: str) -> Method[Any, Any]:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}'. Registered methods: {', '.join(METHODS)}")
    return METHODS[name]


def method_of(model: Any) -> Method[Any, Any]:
    """The method of a resolved model config, or of a registry entry's name."""
    if isinstance(model, str):
        for m in METHODS.values():
            if m.owns(model):
                return m
        raise ConfigError(f"unknown model.name {shown(model)}. Registered models: {', '.join(model_names())}")
    for m in METHODS.values():
        if m.accepts(model):
            return m
    raise ConfigError(f"no registered method accepts model config {type(model).__name__}")


def resolve_model_config(raw: dict | None) -> Any:
    """``{'name': 'dit-s/2', 'depth': 6}`` -> the method's config dataclass: entry + overrides."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"section 'model' must be a mapping of keys to values, got {shown(raw)}")
    raw = dict(raw or {})
    name = raw.pop("name", DEFAULT_MODEL)
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be the name of a registered model, got {shown(name)}. "
                          f"Registered models: {', '.join(model_names())}")
    method = method_of(name)
    return dataclass_from_dict(method.config_cls, raw, "model", base=method.entry_config(name))


# --------------------------------------------------------------------------- sampling settings


def _methods_with(cls: type) -> list[str]:
    return [m.name for m in METHODS.values() if m.sample_config_cls is cls]


def _sample_from_dict(cls: type, data: dict | None, base: Any = None) -> SampleConfig:
    """``data`` -> ``cls`` (a method's sample settings), with an error naming the method and
    its valid keys for a key it does not have.

    A setting of another registered method given as null means "not set" and is ignored:
    that is how checkpoints written before each method owned its settings stored them, and
    it lets one override (``sample.stage_steps=null``) go to recipes of several methods.
    """
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"section 'sample' must be a mapping of keys to values, got {shown(data)}")
    data = dict(data or {})
    own = field_names(cls)
    for key in list(data):
        if key in own:
            continue
        others = [m.name for m in METHODS.values() if key in field_names(m.sample_config_cls)]
        if others and data[key] is None:
            del data[key]
            continue
        names = _methods_with(cls)
        whose = f" for method {', '.join(names)}" if names else ""
        hint = f" ('{key}' is a setting of {', '.join(others)})" if others else ""
        name = key if isinstance(key, str) and len(key) <= 40 else shown(key)
        raise ConfigError(f"unknown key 'sample.{name}'{whose}{hint}. Valid keys of 'sample': {', '.join(own)}")
    return dataclass_from_dict(cls, data, "sample", base=base)


def resolve_sample_config(model_cfg: Any, raw: dict | None) -> SampleConfig:
    """The ``sample`` section of a recipe as the sampling settings of ``model_cfg``'s method."""
    return _sample_from_dict(method_of(model_cfg).sample_config_cls, raw)


def apply_sample_overrides(sample: SampleConfig, overrides: dict | Sequence[str] | None) -> SampleConfig:
    """A copy of ``sample`` with overrides applied and validated (one path for ``ecar sample``,
    ``ecar eval`` and the Python API).

    ``overrides`` is a dict ``{field: value}`` (``None`` values are ignored, convenient for
    optional CLI flags) or a list of ``"key=value"`` / ``"sample.key=value"`` strings.
    A key the method does not have raises :class:`ConfigError` (a ``ValueError``) naming
    the valid ones.
    """
    if not overrides:
        return dataclasses.replace(sample)
    if not isinstance(overrides, dict):
        items = {}
        for text in overrides:
            text = text if text.startswith("sample.") else f"sample.{text}"
            (_, k), v = parse_override(text)
            items[k] = v
        overrides = items
    data = {k: v for k, v in overrides.items() if v is not None}
    return _sample_from_dict(type(sample), data, base=sample)


# --------------------------------------------------------------------------- CLI flags


@dataclass(frozen=True)
class SamplerFlag:
    """One command-line flag derived from a sampling-settings field."""

    flag: str
    dest: str
    type: Callable[[str], Any]
    choices: tuple[str, ...] | None
    metavar: str | None
    help: str


def _parser_of(tp: Any) -> Callable[[str], Any]:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if set(args) == {int, str}:  # a number or a word (gamma: 4 or auto)
            return lambda text: int(text) if text.strip().lstrip("+-").isdigit() else text
        return _parser_of(args[0])
    if typing.get_origin(tp) is list:
        return comma_list(args[0])
    if tp in (int, float, str):
        return tp
    raise TypeError(f"no command-line parser for a setting of type {tp!r}")


def sampler_flags() -> list[SamplerFlag]:
    """A flag per sampling setting of any registered method (``stage_steps`` ->
    ``--stage-steps``), with the help text of its field; a setting that not every method
    has, or whose meaning differs, says for which methods."""
    fields: dict[str, list[tuple[str, dataclasses.Field, Any]]] = {}
    for m in METHODS.values():
        hints = typing.get_type_hints(m.sample_config_cls)
        for f in dataclasses.fields(m.sample_config_cls):
            fields.setdefault(f.name, []).append((m.name, f, hints[f.name]))
    flags = []
    for name, per_method in fields.items():
        helps: dict[str, list[str]] = {}
        for method, f, _ in per_method:
            helps.setdefault(f.metadata.get("help", ""), []).append(method)
        if len(helps) == 1 and len(per_method) == len(METHODS):
            text = next(iter(helps))
        else:
            text = "; ".join(f"{', '.join(ms)}: {h}" for h, ms in helps.items())
        _, f, tp = per_method[0]
        flags.append(SamplerFlag("--" + name.replace("_", "-"), name, _parser_of(tp),
                                 f.metadata.get("choices"), f.metadata.get("metavar"), text))
    return flags


def flag_overrides(args: Any) -> dict:
    """``{setting: value}`` of the :func:`sampler_flags` given on a command line (argparse
    namespace), for :func:`apply_sample_overrides`."""
    out = {}
    for f in sampler_flags():
        value = getattr(args, f.dest, None)
        if value is not None:
            out[f.dest] = value
    return out
