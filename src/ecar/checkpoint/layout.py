"""A run directory's layout: the file and folder names, the marker, which directories are
runs and which of their entries are checkpoints (see :mod:`ecar.checkpoint`)."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ecar.serialization import (
    atomic_write,
)

log = logging.getLogger("ecar.checkpoint")

MODEL_FILE = "model.safetensors"

EMA_FILE = "ema.safetensors"

CONFIG_FILE = "config.yaml"

STATE_FILE = "train_state.pt"

SHARDED_DIR = "sharded"
"""Inside a checkpoint of a ``train.parallel=fsdp`` run: the optimizer state, written by every
rank through ``torch.distributed.checkpoint`` (its ``.metadata`` lets any number of
processes read it back). Its train state says so (``optimizer_format: dcp``)."""

CHECKPOINT_FILES = (MODEL_FILE, EMA_FILE, CONFIG_FILE, STATE_FILE)

CHECKPOINTS_DIR = "checkpoints"

RUN_MARKER = "ecar-run.json"

META_KEY = "ecar"
"""The safetensors metadata key of every weights file ecar writes (sorted JSON: step, family, model)."""

_STEP_DIR = re.compile(r"^step-(\d+)$")

_UNFINISHED = re.compile(r"^\.step-(\d+)\.tmp-[0-9a-f]+$")

SAVE_PAUSE_ENV = "ECAR_TEST_SAVE_PAUSE"
"""Test hook (tests/test_crash.py): seconds to sleep between the steps of a save, so that a
test's SIGKILL can land inside one. Unset or empty, a save never sleeps."""

class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not fit the model it should load into."""

def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"

def pause_for_tests() -> None:
    value = os.environ.get(SAVE_PAUSE_ENV)
    if value:
        time.sleep(float(value))

def mark_run(run: str | Path) -> None:
    """Write the marker that makes ``run`` recognisable as an ecar run (once; kept after)."""
    run = Path(run)
    if not (run / RUN_MARKER).is_file():
        atomic_write(run / RUN_MARKER, (json.dumps({"format": "ecar-run", "version": 1}) + "\n").encode())

def _ecar_weights(path: Path) -> bool:
    """Whether ``path`` is a safetensors file that ecar wrote (its ``ecar`` metadata key)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return META_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False

def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete-named ``step-N`` folders of a ``checkpoints/`` folder, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)

def _has_legacy(run: Path) -> bool:
    return (run / MODEL_FILE).is_file()

def is_run(path: str | Path) -> bool:
    """Whether ``path`` is a directory that holds an ecar run: its marker, a checkpoint in the
    current layout, or the old layout (ecar's weights and a config.yaml directly inside).

    Files named like ecar's but written by something else (a ``model.safetensors`` without
    ecar's metadata) do not count, so a user's own directory is never taken for a run.
    """
    path = Path(path)
    if not path.is_dir():
        return False
    marker = path / RUN_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("format") == "ecar-run":
                return True
        except (OSError, ValueError, AttributeError):
            pass
    if any(_ecar_weights(d / MODEL_FILE) for _, d in _step_dirs(path / CHECKPOINTS_DIR)):
        return True
    return (path / CONFIG_FILE).is_file() and _ecar_weights(path / MODEL_FILE)

def has_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds any checkpoint (complete or not) in either layout."""
    return bool(_candidates(Path(path))[0])

def run_entries(run: str | Path) -> list[Path]:
    """The entries of ``run`` that the checkpoint layout owns (to replace a run with ``--overwrite``)."""
    run = Path(run)
    out = [run / CHECKPOINTS_DIR, run / RUN_MARKER]
    if _ecar_weights(run / MODEL_FILE):
        out += [run / f for f in CHECKPOINT_FILES]
    return [p for p in out if p.exists()]


# --------------------------------------------------------------------------- saving


def _candidates(path: Path) -> tuple[list[Path], Path | None]:
    """Checkpoint folders under ``path``, newest first, and the ``checkpoints/`` folder searched.

    ``path`` is a run directory (current layout, old layout, or both after an old run was
    resumed), its ``checkpoints/`` folder, or one checkpoint's folder.
    """
    if (path / CHECKPOINTS_DIR).is_dir():
        root = path / CHECKPOINTS_DIR
        found = [d for _, d in _step_dirs(root)]
        return found + ([path] if _has_legacy(path) else []), root
    if _has_legacy(path) or _STEP_DIR.match(path.name):
        return [path], None  # one checkpoint, named explicitly: no fallback
    steps = _step_dirs(path)
    return [d for _, d in steps], (path if steps or path.name == CHECKPOINTS_DIR else None)
