"""Errors a user can cause and fix; they sit at the bottom of the import graph."""

from __future__ import annotations


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree (message says what to do)."""


class OutputExistsError(FileExistsError):
    """An output path that holds files the command must not replace (the message names them and
    says what to pass instead: another path, ``--resume`` or ``--overwrite``)."""
