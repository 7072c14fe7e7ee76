"""One writer per output folder: an exclusive OS file lock on a run, a latent cache or the
demo's output folder.

A command that writes such a folder (``ecar train``, ``--resume``, ``--overwrite``,
``ecar draft``, ``ecar cache-latents``, ``ecar demo``) holds ``fcntl.flock(LOCK_EX)`` on
``FOLDER/.ecar.lock`` for as long as it writes. The kernel releases the lock when the process
ends in any way — exit, exception, ``kill -9``, a crash — so a lock is never left stale: a
lock file whose lock nobody holds is simply taken over. The holder writes its PID, host,
command and start time into the file, and a second writer is refused at once
(:class:`~ecar.errors.OutputInUseError`, exit code 1) with those four named. Readers
(``sample``, ``eval``, ``info``, ``serve``, ``--ckpt``) never look at the lock.

On a clean release the holder deletes the file while it still holds the lock; a process
that opened the old file in the meantime notices (the path no longer names the inode it
locked) and tries again, so two writers can never both believe they hold it.

Under ``torchrun`` only rank 0 takes the lock (:mod:`ecar.train.trainer`): it is one run,
written by one group of processes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from ecar.errors import OutputExistsError, OutputInUseError

__all__ = ["LOCK_NAME", "WriterLock", "check_not_locked", "set_command", "writer_lock"]

log = logging.getLogger("ecar.lock")

LOCK_NAME = ".ecar.lock"
"""The lock file inside a locked folder. A leftover one (its holder was killed) is not
content: emptiness checks ignore it (:func:`ecar.serialization.is_empty_dir`)."""

_MAX_COMMAND = 400
_READ_TRIES = 20
_READ_PAUSE = 0.025
_ORPHAN_WAIT = 15.0
"""Seconds a writer waits for a lock whose recorded holder has died but that is still held:
by a child the holder forked (a data-loader worker inherits the lock and notices its parent's
death within about 5 s)."""

_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
"""flock's errors on a file system without locks (some network and FUSE mounts)."""

_command: list[str] | None = None

T = TypeVar("T")


def set_command(argv: list[str]) -> None:
    """The command line this process records as a lock holder (the CLI sets ``ecar ARGS``;
    otherwise it is the interpreter's name and ``sys.argv``)."""
    global _command
    _command = list(argv)


def _this_command() -> str:
    argv = _command if _command is not None else [Path(sys.executable or "python").name, *sys.argv]
    text = shlex.join(argv)
    return text if len(text) <= _MAX_COMMAND else text[: _MAX_COMMAND - 3] + "..."


def _holder_record() -> bytes:
    now = time.time()
    return (json.dumps({
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": _this_command(),
        "since": datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        "since_epoch": now,
    }) + "\n").encode()


def _read_holder(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 4096, 0)
        holder = json.loads(data.decode())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _alive_here(holder: dict | None) -> bool:
    """Whether ``holder`` names a live process of this host (a record being written, or left by
    a process that died, does not)."""
    if holder is None:
        return False
    if holder.get("host") != socket.gethostname():
        return True  # a process of another host sharing the folder: it holds the lock, trust it
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    return f"{s / 3600:.1f} h ago"


def _refusal(path: Path, what: str, holder: dict | None, orphaned: bool = False) -> OutputInUseError:
    if holder is None:
        who = "another process (it has not recorded its name)"
    elif orphaned:
        who = (f"a process started by PID {holder.get('pid')} on host {holder.get('host', '?')} (`"
               f"{str(holder.get('command', '?'))[:_MAX_COMMAND]}`), which has ended; a process it "
               "started, such as a data-loader worker, still holds the lock")
    else:
        since = str(holder.get("since", "?"))
        try:
            since += f", {_ago(time.time() - float(holder['since_epoch']))}"
        except (KeyError, TypeError, ValueError):
            pass
        who = (f"PID {holder.get('pid')} on host {holder.get('host', '?')}, running "
               f"`{str(holder.get('command', '?'))[:_MAX_COMMAND]}` since {since}")
    return OutputInUseError(
        f"{what} '{path}' is being written by another process: {who}. One writer at a time: "
        "wait for it to finish or stop it, then run this command again (reading it meanwhile, "
        "with ecar sample, eval, info or serve, is fine)"
    )


class _NoLocks(Exception):
    """The file system of the folder does not support flock."""


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in _NO_LOCKS:
            raise _NoLocks(e.strerror) from None
        raise
    return True


def _holder_of_locked(path: Path, fd: int) -> dict | None:
    """The record of whoever holds the lock on ``fd``'s file, waiting briefly for one that is
    still being written; None when no live holder is recorded."""
    holder = None
    for _ in range(_READ_TRIES):
        holder = _read_holder(fd)
        if _alive_here(holder):
            return holder
        time.sleep(_READ_PAUSE)
    return holder if _alive_here(holder) else None


def check_not_locked(path: str | Path, what: str) -> None:
    """Refuse (:class:`OutputInUseError`) a folder that a live process is writing, without
    creating or changing anything (a writer's early check, before its other checks, so that a
    refusal names the holder). Does not take the lock: :class:`WriterLock` decides."""
    path = Path(path)
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # no lock file (never written, or released cleanly), or no folder
        return
    try:
        try:
            if _try_lock(fd):
                return  # a leftover of a killed writer (closing the fd unlocks it)
        except _NoLocks:
            return  # WriterLock warns
        holder = _holder_of_locked(path, fd)
        if holder is not None:
            raise _refusal(path, what, holder)
        # a holder that has not recorded itself (or a probe like this one): WriterLock decides
    finally:
        os.close(fd)


class WriterLock:
    """The exclusive lock on folder ``path`` (created with its parents when missing).

    :meth:`acquire` takes it or raises :class:`OutputInUseError` naming the holder;
    :meth:`release` deletes the lock file, and the folders :meth:`acquire` created when they
    are left empty (a command refused after taking the lock leaves nothing behind).
    """

    def __init__(self, path: str | Path, what: str = "folder"):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None
        self._created: list[Path] = []

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _make_dirs(self) -> None:
        missing, p = [], self.path
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        self.path.mkdir(parents=True, exist_ok=True)
        self._created = missing  # innermost first

    def acquire(self) -> "WriterLock":
        if self._fd is not None:
            raise RuntimeError(f"the lock on {self.path} is held already")
        if self.path.exists() and not self.path.is_dir():
            raise OutputExistsError(f"{self.what} '{self.path}' exists and is not a directory; choose another path")
        self._make_dirs()
        try:
            holder = self._take()
        except BaseException:
            self._remove_created()
            raise
        if self._fd is not None:
            return self
        self._remove_created()
        raise _refusal(self.path, self.what, holder, orphaned=holder is not None and not _alive_here(holder))

    def _take(self) -> dict | None:
        """Lock the file (setting ``_fd``), or return the record of its holder (None if none).

        A holder still writing its record, or another writer's brief :func:`check_not_locked`,
        is waited for a moment; a lock whose recorded holder has died (held on by a child of
        it) up to :data:`_ORPHAN_WAIT` seconds."""
        lock_file = self.path / LOCK_NAME
        holder = None
        tries, deadline = 0, None
        while True:
            tries += 1
            opened = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            fd: int | None = opened  # None once kept as the lock (not closed below)
            try:
                try:
                    locked = _try_lock(opened)
                except _NoLocks as e:
                    log.warning("cannot lock %s (%s on this file system): writing it without the "
                                "one-writer check", self.path, e)
                    self._fd, fd = fd, None
                    return None
                if locked:
                    try:
                        st, own = os.stat(lock_file), os.fstat(opened)
                        same = (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
                    except FileNotFoundError:
                        same = False
                    if same:
                        os.ftruncate(opened, 0)
                        os.pwrite(opened, _holder_record(), 0)
                        self._fd, fd = fd, None
                        return None
                    continue  # the previous holder deleted the file on release: lock the new one
                holder = _read_holder(opened)
                if _alive_here(holder):
                    return holder
                if holder is not None and deadline is None:
                    deadline = time.monotonic() + _ORPHAN_WAIT  # its holder died: a child holds it
                if (time.monotonic() > deadline) if deadline is not None else tries >= _READ_TRIES:
                    return holder
                time.sleep(_READ_PAUSE if deadline is None else 0.1)
            finally:
                if fd is not None:
                    os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            try:
                os.unlink(self.path / LOCK_NAME)  # while held: no one can lock it between
            except OSError:
                pass
        finally:
            os.close(self._fd)
            self._fd = None
        self._remove_created()

    def _remove_created(self) -> None:
        for p in self._created:
            try:
                p.rmdir()
            except OSError:  # not empty: something was written, keep it (and its parents)
                break
        self._created = []

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextmanager
def writer_lock(path: str | Path, what: str, check: Callable[[], T] | None = None,
                enabled: bool = True) -> Iterator[T | None]:
    """Hold the lock on ``path`` around a write; yields ``check()``'s result.

    The order makes a refusal cheap and informative: a live holder is named first
    (:func:`check_not_locked`); then ``check`` (the command's own rules for its output, e.g.
    "new, empty or an earlier run") runs before anything is created; then the lock is taken
    and ``check`` runs again, now authoritative, since the folder may have changed while
    unlocked. ``enabled=False`` (ranks other than 0) only runs ``check``.
    """
    if not enabled:
        yield check() if check else None
        return
    check_not_locked(path, what)
    if check is not None:
        try:
            check()
        except Exception:
            check_not_locked(path, what)  # a writer that started meanwhile explains it better
            raise
    with WriterLock(path, what):
        yield check() if check is not None else None
