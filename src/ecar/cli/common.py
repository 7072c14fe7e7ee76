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
from typing import Any, Callable

import torch

from ecar.checkpoint import CheckpointError
from ecar.data import DataError
from ecar.device import check_device_name
from ecar.errors import ConfigError, OutputInUseError, shown
from ecar.methods import sampler_flags
from ecar.samplers import SAMPLER_NAMES
from ecar.schema import check_choice, check_each, check_range, comma_list, parser_kind
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
        message = " ".join(message.split())  # one line, and bounded like every other error
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 3] + "..."
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


class UsageError(ValueError):
    """A command-line flag that is not valid (exit code 2)."""


_SEED_RANGE = {"low": 0, "high": 2**63, "high_open": True}


"""Seeds are in [0, 2**63) (what a torch generator accepts)."""

_ARG_RANGES: dict[str, dict] = {
    "n": {"low": 1}, "batch_size": {"low": 1}, "nrow": {"low": 1}, "n_eval": {"low": 2},
    "fid_samples": {"low": 0}, "distill_steps": {"low": 1}, "batch": {"low": 1}, "components": {"low": 1},
    "width": {"low": 1}, "pool": {"low": 1},
    "seed": _SEED_RANGE, "seeds": _SEED_RANGE,
    "classes": {"low": 0, "meaning": "a class id"},
    "minutes": {"low": 0, "low_open": True, "meaning": "minutes"},
    "train_minutes": {"low": 0, "low_open": True, "meaning": "minutes"},
    "sweep": {"low": 0, "low_open": True, "meaning": "a multiplier of the shipped step counts"},
}


"""The valid range of the number flags, by argparse dest (:func:`ecar.schema.check_range`'s
arguments; a flag a command lacks is skipped). A list flag (parsed by :func:`comma_list`:
``--seeds``, ``--classes``, ``--sweep``) is checked entry by entry with the rule of the
scalar it holds (``--seeds`` as ``--seed``), entry ``i`` named ``--seeds[i]``."""

_ARG_CHOICES = {"samplers": SAMPLER_NAMES}


"""List flags whose entries are names: the choices of their scalar (``--samplers`` as ``--sampler``)."""

def check_args(args) -> None:
    """Range checks of the plain flags and of every entry of the list flags, before any work
    (the sampler flags are config settings and are checked by the schema, lists entry by
    entry too; ``--device`` by its spelling here and its availability when it is picked).
    The messages are the config schema's: ``--seed=-1 is not valid: it must be in [0, …)``."""
    for dest, rule in _ARG_RANGES.items():
        value = getattr(args, dest, None)
        flag = "--" + dest.replace("_", "-")
        if isinstance(value, list):
            check_each(flag, value, **rule)
        else:
            check_range(flag, value, **rule)
    for dest, choices in _ARG_CHOICES.items():
        for i, value in enumerate(getattr(args, dest, None) or ()):
            check_choice(f"--{dest}[{i}]", value, choices)
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
        hint = _OS_HINTS.get(e.errno) if e.errno is not None else None
        text = f"{e.strerror}{where}" + (f" ({hint})" if hint else "")
    else:
        text = str(e) or type(e).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` as an argparse ``type=`` whose refusal quotes a bounded value
    (:func:`ecar.errors.shown`; argparse would quote all of a 5,000-digit argument)."""
    kind = parser_kind(parse)

    def typed(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {shown(text)}") from None

    typed.__name__ = kind
    return typed


INTS, NUMBERS, NAMES = (flag_type(comma_list(t)) for t in (int, float, str))


"""argparse ``type=`` of the list flags (``--seeds 0,1,2``): the parser of the derived list
sampler flags (``--stage-steps``, :func:`ecar.schema.comma_list`), so a list is read the
same way everywhere."""


def add_sampler_args(p) -> None:
    """Flags that override the recipe's shipped sampler settings (sample, eval): one per
    sampling setting of the registered methods (:func:`ecar.methods.sampler_flags`)."""
    for f in sampler_flags():
        p.add_argument(f.flag, dest=f.dest, type=flag_type(f.type), choices=f.choices, metavar=f.metavar,
                       help=f.help)
