"""Small file and state-dict helpers shared by checkpoints, pretrained weights and caches,
and the checks that keep a command from replacing files it did not create."""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

import torch
from torch import nn

from ecar.errors import OutputExistsError
from ecar.lock import LOCK_NAME

log = logging.getLogger("ecar")


def write_new_file(path: str | Path, data: bytes) -> None:
    """Create ``path`` (which must not exist), write ``data`` and fsync it.

    The file is created with mode 0o666 less the process umask, like any file a user's
    program creates; ``tempfile.mkstemp`` would give 0600 and hide a run's files from a
    group that shares it.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        if os.path.exists(path):
            os.unlink(path)
        raise


def fsync_dir(path: str | Path) -> None:
    """Make the creation, rename or removal of entries in directory ``path`` durable."""
    try:
        dfd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory handles: nothing to sync
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def hidden_temp_name(directory: str | Path, name: str, tag: str = "tmp") -> Path:
    """A fresh hidden name ``directory/.{name}.{tag}-{random}`` (for temporary files and folders)."""
    return Path(directory) / f".{name}.{tag}-{secrets.token_hex(4)}"


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename.

    A crash leaves either the old file or the new one, never a torn one. The file follows
    the user's umask (see :func:`write_new_file`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = hidden_temp_name(path.parent, path.name)
    write_new_file(tmp, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_tree(path: str | Path) -> None:
    """Remove a folder in one visible step: rename it to a hidden name, then delete that.

    A crash in the middle leaves a hidden ``.NAME.trash-*`` folder, never a half-deleted
    folder under the real name that a reader could mistake for a damaged original.
    """
    path = Path(path)
    trash = hidden_temp_name(path.parent, path.name, "trash")
    os.rename(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def entries(path: str | Path) -> list[Path]:
    """The entries of folder ``path``, less a writer's lock file (:mod:`ecar.lock`): the lock
    of a writer that was killed stays behind, and is no content of the folder."""
    return [p for p in Path(path).iterdir() if p.name != LOCK_NAME]


def is_empty_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder with nothing in it (a leftover lock file aside)."""
    path = Path(path)
    return path.is_dir() and not entries(path)


def check_output_file(path: str | Path, overwrite: bool, what: str = "output") -> None:
    """Refuse (:class:`OutputExistsError`) an output file that exists, unless ``overwrite``.

    Called before the work that produces the file, so a refusal costs nothing and changes
    nothing. A directory at ``path`` is refused even with ``overwrite``.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{what} '{path}' is a directory; give the path of a file to write")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExistsError(
                f"{what} '{path}' already exists; pass --overwrite to replace it, or choose another path"
            )
        log.info("--overwrite: replacing %s", path)


def check_output_dir(path: str | Path, overwrite: bool, what: str = "output directory") -> None:
    """Refuse a non-empty output directory (or a file in its place) unless ``overwrite``.

    A command that writes many files into a directory writes only into a new or empty one,
    so it can never mix its files with, or replace, files it did not create.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{what} '{path}' exists and is not a directory; choose another path")
    if path.is_dir() and not is_empty_dir(path):
        if not overwrite:
            raise OutputExistsError(
                f"{what} '{path}' is not empty; choose a new or empty directory, or pass --overwrite "
                "to write into it (files of the same names are replaced)"
            )
        log.info("--overwrite: writing into the non-empty directory %s; files of the same names are replaced",
                 path)


def load_refusal(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, for a user, without torch's advice.

    torch's message for a file holding objects beyond tensors and plain containers tells the
    reader to retry with ``weights_only=False`` or to allowlist the offending globals; both
    let the file run arbitrary code, and a file we refused is exactly the one not to trust.
    So this keeps only what was refused (e.g. ``Unsupported global: GLOBAL posix.system``)
    and says what to do instead, or the first line of any other failure.
    """
    text = str(error)
    refused = re.search(r"(Unsupported (?:global|operand)[^\n]*?)(?:\.\s|\.$|\n|$)", text)
    if refused or "weights_only" in text or "Weights only load failed" in text:
        what = refused.group(1)[:200] if refused else "objects beyond tensors and plain data"
        return (f"refused: {what}; ecar does not unpickle objects beyond tensors and plain data, "
                "because loading them can run code from the file. It was not written by ecar or it "
                "was altered: use a checkpoint from a source you trust")
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:300]


def state_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not fit ``module`` (missing / unexpected keys, shapes), or None."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: stored {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} missing tensors (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
    return "; ".join(parts) or None
