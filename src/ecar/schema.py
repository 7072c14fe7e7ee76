"""The machinery under every config dataclass: typed parsing, unknown-key errors, overrides.

A config section is a plain dataclass. :func:`dataclass_from_dict` builds one from a
mapping: every key is checked (an unknown key is an error that names the valid keys), every
value is checked against the field's annotation (and coerced where that is safe), and the
dataclass's ``validate()`` runs last. :func:`setting` attaches a help text (and choices)
to a field, from which command-line flags are derived (:mod:`ecar.methods.registry`).

This is the boundary where a user's input enters (docs/errors.md): every number must be
finite (a NaN passes every ``<``/``>`` range check, so it is refused here once instead of
in every section's ``validate()``), every message quotes a value through
:func:`ecar.errors.shown` (bounded), and YAML text is read by :func:`load_yaml_text`,
which bounds nesting depth and alias expansion so that a few hundred bytes cannot make
the loader, or anything that walks its result, hang or exhaust memory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Callable, Sequence

import yaml

from ecar.errors import MAX_SHOWN, ConfigError, shown

__all__ = ["ConfigError", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "check_choice", "check_each", "check_range",
           "comma_list", "dataclass_from_dict", "field_names", "load_yaml_text", "parse_override", "parser_kind",
           "setting", "setting_label", "yaml_error_line"]

MAX_YAML_DEPTH = 64
"""Deepest nesting of a YAML document we read (a recipe needs 3: sections, keys, lists)."""

INT_LIMIT = 2**63
"""Integers of a config are 64-bit: torch and numpy overflow beyond (and nothing needs more)."""

MAX_YAML_NODES = 100_000
"""Most nodes a YAML document may have once its aliases are expanded (recipes have ~100)."""


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None,
            metavar: str | None = None, label: str | None = None) -> Any:
    """A dataclass field with a help text (and optional choices) for derived CLI flags, and
    ``label``: its name in words for the web page of ``ecar serve`` (default: the field name)."""
    meta = {"help": help, "choices": tuple(choices) if choices is not None else None, "metavar": metavar,
            "label": label}
    return dataclasses.field(default=default, metadata=meta)


def setting_label(cls: type, name: str) -> str:
    """The label of setting ``name`` of dataclass ``cls``: its own ``label``, else that of the
    nearest base class that declares the field with one (a subclass that only changes a
    default or a help text keeps the label), else the name with spaces."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("label"):
            return str(f.metadata["label"])
    return name.replace("_", " ")


def check_choice(where: str, value: Any, valid: Sequence[str]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``valid``."""
    if value not in valid:
        raise ConfigError(f"{where}={shown(value)} is not valid; choose one of: {', '.join(valid)}")


def check_range(where: str, value: Any, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, meaning: str = "") -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (``<`` where open).

    The message names the field, the value and the valid interval (``meaning`` adds what
    the field's special values mean, e.g. ``"0 = no clipping"``). ``None`` passes: optional
    fields check their absence themselves.
    """
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        isinstance(value, int) or math.isfinite(value))  # math.isfinite(10**400) would overflow
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {_num(low)}"
    else:
        assert high is not None  # a value out of range has a bound it failed
        want = f"{'<' if high_open else '<='} {_num(high)}"
    if isinstance(value, float) and not math.isfinite(value):
        want = f"a finite number {want}"
    raise ConfigError(f"{where}={shown(value)} is not valid: it must be {want}"
                      + (f" ({meaning})" if meaning else ""))


def check_each(where: str, values: Sequence[Any] | None, low: float | None = None, high: float | None = None,
               **kwargs: Any) -> None:
    """:func:`check_range` of every entry of a list-valued field or flag, entry ``i`` named
    ``where[i]``: a list is checked by the same rule, with the same message, as the scalar it
    holds (``sample.stage_steps[1]=0 is not valid: it must be >= 1`` like ``sample.steps=0 …``).
    ``None`` passes."""
    for i, value in enumerate(values or ()):
        check_range(f"{where}[{i}]", value, low, high, **kwargs)


def comma_list(inner: type) -> Callable[[str], list]:
    """The parser of a comma-separated list flag (``"10,8,6"`` -> ``[10, 8, 6]``; empty entries
    skipped): each entry parsed by ``inner`` (``int``, ``float``, ``str``). Its ``__name__``
    is what argparse and the page call the expected kind. One parser for every list a user
    types: the derived sampler flags (``--stage-steps``), ``--seeds``, ``--classes``,
    ``--sweep`` and the page's settings."""
    kind = {int: "integers", float: "numbers", str: "names"}[inner]

    def parse(text: str) -> list:
        return [inner(v.strip()) for v in text.split(",") if v.strip()]

    parse.__name__ = f"comma-separated {kind}"
    return parse


def parser_kind(parse: Callable[[str], Any]) -> str:
    """What a value parser expects, in words (``int`` -> ``an integer``, a :func:`comma_list`
    -> ``comma-separated integers``), for the message that refuses a value."""
    name = getattr(parse, "__name__", "a value")
    return {"int": "an integer", "float": "a number", "str": "a string"}.get(name, name)


def _num(x: float) -> str:
    if isinstance(x, int) and x >= 2**20 and not x & (x - 1):
        return f"2**{x.bit_length() - 1}"  # a seed's limit, not 9223372036854775808
    return str(x) if isinstance(x, int) else f"{x:g}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        alternatives = [a for a in args if a is not type(None)]
        if len(alternatives) == 1:  # Optional[X]: X's own message, which names a list's bad entry
            return _coerce(value, alternatives[0], where)
        for a in alternatives:
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {shown(value)}")
    if origin in (list, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {shown(value)}")
    if tp is int:
        number = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        if number is None:
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}")
        if not -INT_LIMIT <= number < INT_LIMIT:
            raise ConfigError(f"{where}: {shown(number)} is out of range (integers are 64-bit)")
        return number
    if tp is float:
        real: float | None = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                real = float(value)
            except (ValueError, OverflowError):
                pass
        if real is None:
            raise ConfigError(f"{where}: expected a number, got {shown(value)}")
        if not math.isfinite(real):
            raise ConfigError(f"{where}: expected a finite number, got {shown(value)}")
        return real
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {shown(value)}")
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
        raise ConfigError(f"section '{where}' must be a mapping of keys to values, got {shown(data)}")
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown key '{where}.{_key_text(key)}'{owner}. Valid keys of '{where}': {', '.join(names)}"
            )
        setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _key_text(key: Any) -> str:
    """A mapping key as a message shows it: a string as is (bounded), anything else as repr."""
    return key if isinstance(key, str) and len(key) <= MAX_SHOWN else shown(key)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=3e-4'`` -> (['train', 'lr'], 0.0003). Values are parsed as YAML
    (:func:`load_yaml_text`, so an override is bounded like a recipe)."""
    if "=" not in text:
        raise ConfigError(f"override {shown(text)} must look like section.key=value")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key {shown(key)} must look like section.key (e.g. train.lr)")
    parsed = load_yaml_text(value, f"the value of override '{_key_text(key.strip())}'") if value.strip() != "" else None
    if isinstance(parsed, str) and parsed.lower() in ("none", "null"):
        parsed = None
    return parts, parsed


# --------------------------------------------------------------------------- bounded YAML


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two bounds (:data:`MAX_YAML_DEPTH`, :data:`MAX_YAML_NODES`).

    Depth: the composer recurses once per nesting level, so 20,000 nested brackets would
    end in a ``RecursionError`` deep inside PyYAML. Aliases: ``*a`` shares a node instead of
    copying it, so nine levels of nine aliases are 230 bytes and 10⁹ nodes once anything
    (a repr, ``dataclasses.asdict``, a deep copy) walks the result; the document is refused
    before it is constructed when its expanded size exceeds the bound, and a recursive
    alias (a node inside itself) is refused too.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"nested more than {MAX_YAML_DEPTH} levels deep (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        _check_expanded_size(node)
        return super().construct_document(node)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expanded_size(root: yaml.Node) -> None:
    """Raise :class:`ConfigError` if ``root`` expands to more than :data:`MAX_YAML_NODES`
    nodes or contains itself. Iterative, memoised per shared node: linear in the document."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_nodes.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
            if size[key] > MAX_YAML_NODES:
                raise ConfigError(
                    f"its aliases (*name) expand to more than {MAX_YAML_NODES:,} values "
                    f"(line {node.start_mark.line + 1}); a recipe needs far fewer"
                )
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise ConfigError(f"an alias refers to a value that contains it (line {node.start_mark.line + 1})")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def load_yaml_text(text: str, source: str) -> Any:
    """Parse one YAML document safely (no tags beyond YAML's own, bounded depth and alias
    expansion); any failure is a :class:`ConfigError` that names ``source``."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except ConfigError as e:
        raise ConfigError(f"{source} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {_bounded_text(yaml_error_line(e))}") from None
    except (RecursionError, ValueError, OverflowError, TypeError) as e:
        # the constructor's own failures: an int over Python's digit limit, a date like
        # 2024-13-45, a merge key (<<) of the wrong kind
        raise ConfigError(f"{source} holds a value YAML cannot represent: {_bounded_text(str(e))}") from None


def yaml_error_line(e: yaml.YAMLError) -> str:
    """PyYAML's error in one line: where (line, column), what was expected or found, and
    where the construct it was parsing began (PyYAML's own text spans five lines and quotes
    the source with a caret under it)."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem is None and mark is None:
        return " ".join(str(e).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    text = where + " ".join(str(problem or "").split())
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context:
        text += f" ({' '.join(context.split())}"
        text += f" that began at line {cmark.line + 1}, column {cmark.column + 1})" if cmark is not None else ")"
    return text


def _bounded_text(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
