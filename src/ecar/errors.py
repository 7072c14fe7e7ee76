"""Errors a user can cause and fix; they sit at the bottom of the import graph.

Every message that quotes a user's value goes through :func:`shown`: a YAML document can
hold a structure whose repr is gigabytes (nested aliases, "billion laughs"), so a message
quotes a bounded prefix of it, never the whole thing.
"""

from __future__ import annotations

import reprlib
from typing import Any

__all__ = ["ConfigError", "MAX_SHOWN", "OutputExistsError", "OutputInUseError", "shown"]

MAX_SHOWN = 80
"""Characters of a user's value that an error message quotes at most."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdict = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_SHOWN


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree (message says what to do)."""


def shown(value: Any) -> str:
    """``repr(value)`` cut to at most :data:`MAX_SHOWN` characters, in time and memory
    independent of the value's size (nesting depth and items are bounded before the repr
    is built, so a shared, exponentially large alias structure is never expanded)."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - an int over Python's digit limit, a broken __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


class OutputExistsError(FileExistsError):
    """An output path that holds files the command must not replace (the message names them and
    says what to pass instead: another path, ``--resume`` or ``--overwrite``)."""


class OutputInUseError(RuntimeError):
    """An output folder (a run, a latent cache, the demo's folder) that another live process is
    writing: it holds the folder's lock (:mod:`ecar.lock`); the message names it (PID, host,
    command, since when). Exit code 1, like any output the command must not write into."""
