"""`ecar` commands in child processes for the tests that kill, race or lock them.

Children are forked from a forkserver that has imported ``ecar.cli`` (and what a run imports
lazily) once, so a start costs milliseconds instead of seconds of imports (as in
tests/test_crash.py). Each runs the CLI's ``main`` with its stderr in a log file, stdout
discarded, one thread. ``proc.pid`` is the PID of the process that runs the command.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from ecar.checkpoint import CHECKPOINT_FILES
from ecar.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "digits_dit.yaml")
TINY = [
    "model.hidden=16", "model.depth=1", "model.heads=2", "train.batch_size=8",
    "train.warmup_steps=5", "train.schedule=constant", "sample.steps=1", "train.sample_every=0",
    "train.keep_last=2",
]


def _child(argv: list[str], log: str, env: dict[str, str | None]) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    for key, value in env.items():  # None: unset
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value
    torch.set_num_threads(1)
    tqdm.set_lock(threading.RLock())  # tqdm's default lock is a semaphore that a SIGKILL would leak
    sys.exit(main(argv))


def forkserver():
    ctx = multiprocessing.get_context("forkserver")
    # what a run imports on the way, lazily (AdamW: torch._dynamo; the digits: scikit-learn)
    ctx.set_forkserver_preload(["ecar.cli", "torch._dynamo", "sklearn.datasets"])
    return ctx


def start(ctx, log: Path, *argv: str, env: dict[str, str | None] | None = None):
    """``ecar ARGV`` in a child; returns the process (stderr goes to ``log``; ``env`` sets or,
    with None, unsets variables in the child)."""
    proc = ctx.Process(target=_child, args=(list(argv), str(log), env or {}), daemon=True)
    proc.start()
    return proc


def finish(proc, timeout: float = 120.0, what: str = "an ecar command") -> int:
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        pytest.fail(f"{what} did not finish in time")
    return proc.exitcode


def wait_for(cond, procs, what: str, timeout: float = 60.0, poll: float = 0.01):
    """Poll ``cond()`` until it is truthy; give up (and kill ``procs``) after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(poll)
    for p in procs:
        p.kill()
    pytest.fail(f"timed out waiting for {what}")


def complete_steps(run: Path) -> list[int]:
    """Steps of the complete checkpoints of ``run`` (found here independently of ecar)."""
    root = run / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in root.iterdir()
                  if p.name.startswith("step-") and all((p / f).is_file() for f in CHECKPOINT_FILES))


def metric_rows(run: Path) -> list[dict]:
    """The whole rows of ``run``'s metrics.jsonl (a line being written is left out)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]
