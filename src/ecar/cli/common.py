"""What every ``ecar`` command shares: exit codes, the one error path, the parser.

One error path (:func:`ecar.cli.main`, docs/errors.md): every error a user can cause (bad
config key or value, bad flag, missing or damaged checkpoint, unreadable data, NaN loss, an
OS error on a path they gave, a request too large for memory, an output that must not be
replaced) is printed as one ``error:`` line with what to do, and the process exits with the
documented code (:data:`EXIT_CODES`); ``--debug`` adds the traceback. Any other exception is
a bug: its traceback stays visible, followed by a line that says how to report it.
"""

from __future__ import annotations

import argparse
import errno
import math

import torch

from ecar.checkpoint import CheckpointError
from ecar.data import DataError
from ecar.device import check_device_name
from ecar.errors import ConfigError, OutputInUseError
from ecar.train.trainer import TrainingDiverged


EXIT_USAGE, EXIT_FAIL, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 70, 130


EXIT_CODES = {
    0: "success",
    EXIT_FAIL: "an output another process is writing (its lock names it), or one that must not be "
               "replaced; the run failed on valid input: damaged checkpoint, unreadable data, training "
               "diverged, an OS error on a path given (missing, no permission, disk full), out of memory",
    EXIT_USAGE: "invalid input: a flag, a config file, key or value, a request too large for memory",
    EXIT_BUG: "an unexpected error, a bug in ecar: the traceback is shown; please report it",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C / SIGTERM); training saved a checkpoint first",
}


"""Exit codes of ``ecar`` (docs/errors.md has the table and the common errors)."""

MAX_MESSAGE = 2000


"""Characters of an error message printed at most (the sources bound the values they quote)."""

BUG_REPORT = (
    "ecar: the error above is unexpected - a bug in ecar, not a mistake of yours. Please report "
    "it (an issue of the ecar project) with the command you ran, this traceback and the output "
    "of `python -m pip show ecar torch`."
)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one error format: an ``error:`` line and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


class UsageError(ValueError):
    """A command-line flag that is not valid (exit code 2)."""


_ARG_MINIMUM = {"n": 1, "batch_size": 1, "nrow": 1, "n_eval": 2, "fid_samples": 0, "seed": 0,
                "distill_steps": 1, "batch": 1, "components": 1, "width": 1, "pool": 1}


"""Smallest valid value of the integer flags, by argparse dest (a flag a command lacks is skipped)."""

_ARG_MINUTES = ("minutes", "train_minutes")


"""Flags that are a time budget: a finite number of minutes > 0."""

_SEED_LIMIT = 2**63


"""Seeds are below 2**63 (what a torch generator accepts)."""

def check_args(args) -> None:
    """Range checks of the plain flags, before any work (the sampler flags are config
    settings and are checked by the schema; ``--device`` by its spelling here and its
    availability when it is picked)."""
    for dest, low in _ARG_MINIMUM.items():
        value = getattr(args, dest, None)
        if value is not None and value < low:
            raise UsageError(f"--{dest.replace('_', '-')}={value} is not valid: it must be >= {low}")
    seed = getattr(args, "seed", None)
    if seed is not None and seed >= _SEED_LIMIT:
        raise UsageError(f"--seed={seed} is not valid: it must be below 2**63")
    for dest in _ARG_MINUTES:
        value = getattr(args, dest, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{dest.replace('_', '-')}={value} is not valid: it must be a number of minutes > 0")
    device = getattr(args, "device", None)
    if device is not None:
        check_device_name(device, "--device")


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "no permission there: choose a path you can read / write",
    errno.EPERM: "no permission there: choose a path you can read / write",
    errno.EROFS: "that file system is read-only: choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "that path is a folder, a file was expected",
    errno.EEXIST: "something else already exists at that path",
    errno.ENOSPC: "the disk is full: free space or choose another path",
    errno.ENAMETOOLONG: "the path is too long",
    errno.ELOOP: "the path goes through a symbolic link loop",
}


_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")


"""How torch words a failed allocation (CPU: a RuntimeError from DefaultCPUAllocator)."""

def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _OUT_OF_MEMORY)


def error_code(e: BaseException) -> int | None:
    """The exit code of an expected error, or None for an unexpected one (a bug)."""
    if isinstance(e, (ConfigError, UsageError)):
        return EXIT_USAGE
    if isinstance(e, (CheckpointError, TrainingDiverged, DataError, OSError, OutputInUseError)) or _out_of_memory(e):
        return EXIT_FAIL
    return None


def error_text(e: BaseException) -> str:
    """The ``error:`` line's text: bounded, with a hint for OS and memory errors."""
    if _out_of_memory(e) and not isinstance(e, (CheckpointError, TrainingDiverged)):
        text = ("out of memory; lower --batch-size (sampling, evaluation) or train.batch_size, "
                "or ask for fewer images")
    elif isinstance(e, OSError) and e.strerror:
        where = "" if e.filename is None else f": '{e.filename}'"
        if getattr(e, "filename2", None) is not None:
            where += f" -> '{e.filename2}'"
        hint = _OS_HINTS.get(e.errno)
        text = f"{e.strerror}{where}" + (f" ({hint})" if hint else "")
    else:
        text = str(e) or type(e).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def parse_ints(text: str | None, what: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got '{text}'") from None
