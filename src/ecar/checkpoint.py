"""Checkpoints and run directories.

A run directory (what ``ecar train --out`` names) holds::

    RUN/ecar-run.json                  marker: this directory is an ecar run (written first)
    RUN/checkpoints/step-00000120/     one complete checkpoint per folder:
        model.safetensors                weights, step and family in the metadata
        ema.safetensors                  EMA weights, same metadata
        config.yaml                      the resolved config
        train_state.pt                   optimizer, RNG, data position (weights_only=True)
    RUN/checkpoints/step-00000123/     the newest one is the current one
    RUN/metrics.jsonl, RUN/samples/    written by the trainer

**A checkpoint is one unit** (crash consistency). Its four files are written, each
fsynced, into a hidden folder ``checkpoints/.step-….tmp-…``; the folder is fsynced and
renamed to ``step-NNNNNNNN`` (one atomic step, made durable by an fsync of
``checkpoints/``); only then are older checkpoints beyond ``train.keep_last`` removed. A
kill at any moment leaves the previous checkpoints intact and at most a hidden unfinished
folder, which readers skip (and say so) and the next save deletes. Four files each
written atomically but side by side, as before, could be left torn between two steps.

A ``train.parallel=fsdp`` run saves the same four files (rank 0 gathers the full weights
and EMA) plus ``sharded/``, the optimizer state written by every rank through
``torch.distributed.checkpoint`` into the same hidden folder before rank 0 commits it
(:mod:`ecar.train.parallel`); its ``train_state.pt`` then holds no optimizer.

Readers (:func:`load_checkpoint`, :func:`find_checkpoint`) accept the run directory, its
``checkpoints/`` folder or one ``step-…`` folder, and take the newest checkpoint that
loads, logging every one they skip. The old layout, the four files directly in the run
directory, still loads (as the oldest checkpoint of its run), and the weights' metadata
still lets loading check that the files of a checkpoint belong to the same step.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import nn

from ecar.config import Config, ConfigError, config_from_dict, config_to_yaml, load_yaml
from ecar.methods import method_of
from ecar.serialization import (
    atomic_write,
    fsync_dir,
    hidden_temp_name,
    load_refusal,
    remove_tree,
    state_mismatch,
    write_new_file,
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


def _state_bytes(module_or_state: nn.Module | dict, meta: dict[str, str]) -> bytes:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return save(tensors, metadata=meta)


# --------------------------------------------------------------------------- run directories


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


def save_checkpoint(
    run: str | Path,
    *,
    model: nn.Module,
    ema: nn.Module,
    cfg: Config,
    step: int,
    train_state: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write one complete checkpoint into ``run/checkpoints/step-N`` and make it current.

    Order (module docstring): files into a hidden folder, each fsynced; the folder fsynced
    and renamed (the commit); ``checkpoints/`` fsynced; then older checkpoints beyond
    ``keep_last`` (default ``cfg.train.keep_last``) removed. Returns the new folder.
    A sharded save (:mod:`ecar.train.parallel`) runs the same three steps, with every rank
    writing its shards into the hidden folder between :func:`begin_save` and :func:`commit_save`.
    """
    tmp = begin_save(run, step)
    try:
        write_checkpoint_files(tmp, model.state_dict(), ema.state_dict(), cfg, step, train_state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_save(run, tmp, step, cfg.train.keep_last if keep_last is None else keep_last)


def begin_save(run: str | Path, step: int) -> Path:
    """Create the hidden folder that a save of ``step`` writes into (after deleting the leftovers
    of interrupted saves); returns it."""
    run = Path(run)
    root = run / CHECKPOINTS_DIR
    fresh = not root.is_dir()
    root.mkdir(parents=True, exist_ok=True)
    if fresh:
        fsync_dir(run)
    _remove_unfinished(root)
    tmp = hidden_temp_name(root, step_dir_name(step))
    os.mkdir(tmp, 0o777)  # the umask applies, as to the files
    return tmp


def write_checkpoint_files(tmp: Path, model_state: dict[str, torch.Tensor], ema_state: dict[str, torch.Tensor],
                           cfg: Config, step: int, train_state: dict[str, Any]) -> None:
    """Write the four files of a checkpoint (each fsynced) into the hidden folder ``tmp``."""
    # one metadata key holding sorted JSON: safetensors stores a hash map, whose order (and so
    # the file's bytes) would otherwise vary between two saves of the same weights
    meta = {META_KEY: json.dumps(
        {"step": step, "family": method_of(cfg.model).family, "model": cfg.model.name}, sort_keys=True
    )}
    buf = io.BytesIO()
    torch.save({**train_state, "step": step}, buf)
    contents = {
        MODEL_FILE: _state_bytes(model_state, meta),
        EMA_FILE: _state_bytes(ema_state, meta),
        CONFIG_FILE: config_to_yaml(cfg).encode(),
        STATE_FILE: buf.getvalue(),
    }
    for fname, data in contents.items():
        write_new_file(tmp / fname, data)
        pause_for_tests()


def commit_save(run: str | Path, tmp: Path, step: int, keep_last: int) -> Path:
    """Make the hidden folder ``tmp`` the checkpoint of ``step``: fsync it (and a folder of
    shards inside), rename it (the commit), fsync ``checkpoints/``, then prune."""
    run = Path(run)
    root = run / CHECKPOINTS_DIR
    try:
        if (tmp / SHARDED_DIR).is_dir():
            fsync_dir(tmp / SHARDED_DIR)
        fsync_dir(tmp)
        final = root / step_dir_name(step)
        if final.exists():  # a damaged or stale checkpoint of this step (resume took an older one)
            log.warning("replacing the existing checkpoint %s", final)
            remove_tree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    pause_for_tests()
    prune_checkpoints(run, keep_last)
    return final


def _remove_unfinished(root: Path) -> None:
    """Delete what interrupted saves and prunes left behind: hidden ``.step-…`` folders only."""
    for p in root.iterdir():
        if p.name.startswith(".step-") and (".tmp-" in p.name or ".trash-" in p.name) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run: str | Path, keep_last: int) -> list[Path]:
    """Remove all but the newest ``keep_last`` checkpoints of ``run``; returns what was removed.

    An old-layout checkpoint (files directly in ``run``) counts as the oldest and is removed
    like the others once ``keep_last`` newer ones exist.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    run = Path(run)
    steps = _step_dirs(run / CHECKPOINTS_DIR)
    removed = []
    for _, d in steps[keep_last:]:
        remove_tree(d)
        removed.append(d)
    if len(steps) >= keep_last and _ecar_weights(run / MODEL_FILE):
        for f in CHECKPOINT_FILES:  # the weights first: without them the rest is no checkpoint
            if (run / f).exists():
                os.unlink(run / f)
        fsync_dir(run)
        removed.append(run / MODEL_FILE)
    return removed


# --------------------------------------------------------------------------- loading


@dataclass
class Checkpoint:
    directory: Path
    """The folder of the checkpoint that was loaded (a ``step-…`` folder, or an old-layout run)."""
    cfg: Config
    step: int
    family: str
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None
    train_state: dict[str, Any] | None = None


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


def _report_unfinished(root: Path | None, newer_than: int) -> None:
    if root is None or not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        m = _UNFINISHED.match(p.name)
        if m and int(m.group(1)) > newer_than:
            log.warning("skipping %s: an unfinished save of step %d (the run stopped while saving)",
                        p, int(m.group(1)))


def read_config(directory: str | Path) -> Config:
    """The config of one checkpoint folder (see :func:`find_checkpoint` for a run directory)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}; is it an ecar checkpoint directory?")
    try:  # load_yaml bounds the document: a config.yaml is user input too
        return config_from_dict(load_yaml(path) or None)
    except (ConfigError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path} does not hold a valid ecar config: {e}") from None


def _read_meta(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        meta = None if raw is None else {k: str(v) for k, v in json.loads(raw).items()}
    except (SafetensorError, OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise _damaged(path, e) from None
    if meta is None:  # every checkpoint ecar ever wrote has this key
        raise CheckpointError(
            f"{path} was not written by ecar (no 'ecar' metadata): '{path.parent}' is not an ecar "
            "checkpoint; pass the directory that `ecar train --out` wrote"
        )
    return meta


def _load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    meta = _read_meta(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise _damaged(path, e) from None


def _damaged(path: Path, e: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is damaged")


def _load_one(directory: Path, with_ema: bool, with_state: bool, weights: bool = True,
              with_model: bool = True) -> Checkpoint:
    """Load one checkpoint folder and check that the files it reads agree (with each other and
    its name). ``with_ema=False`` never opens the EMA file, so an EMA a step behind (an old
    version's interrupted save) does not stop a reader that wants the raw weights;
    ``with_model=False`` reads the model's tensors only when there is no EMA to use instead."""
    if not (directory / MODEL_FILE).is_file():
        raise CheckpointError(
            f"'{directory}' has no {MODEL_FILE}; pass the directory that `ecar train --out` wrote"
        )
    meta = _read_meta(directory / MODEL_FILE)  # first: is it ecar's at all?
    cfg = read_config(directory)
    ema_state = None
    if with_ema and (directory / EMA_FILE).is_file():
        if weights:
            ema_state, ema_meta = _load_weights(directory / EMA_FILE)
        else:
            ema_meta = _read_meta(directory / EMA_FILE)
        if ema_meta.get("step") != meta.get("step"):
            raise CheckpointError(
                f"{directory}: {MODEL_FILE} (step {meta.get('step')}) and {EMA_FILE} "
                f"(step {ema_meta.get('step')}) disagree; the last save was interrupted"
            )
    need_model = weights and (with_model or ema_state is None)
    model_state = _load_weights(directory / MODEL_FILE)[0] if need_model else {}
    family = method_of(cfg.model).family
    if meta.get("family") and meta["family"] != family:
        raise CheckpointError(
            f"{directory}: weights are of model family '{meta['family']}' but config.yaml "
            f"describes family '{family}'; the files come from different runs"
        )
    step = int(meta.get("step", 0))
    named = _STEP_DIR.match(directory.name)
    if named and int(named.group(1)) != step:
        raise CheckpointError(f"{directory} holds the weights of step {step}; its files were moved or edited")
    state = load_train_state(directory, step) if with_state else None
    return Checkpoint(directory, cfg, step, family, model_state, ema_state, state)


def _newest(path: str | Path, with_ema: bool, with_state: bool, weights: bool, with_model: bool = True) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint directory '{path}' does not exist")
    found, root = _candidates(path)
    unfinished = root is not None and root.is_dir() and any(
        _UNFINISHED.match(p.name) for p in root.iterdir())
    if not found and (unfinished or is_run(path)):
        raise CheckpointError(
            f"'{path}' is an ecar run without a complete checkpoint: it stopped before its first "
            "checkpoint was complete. Start it again (`ecar train --overwrite` replaces it)"
        )
    if not found:
        raise CheckpointError(
            f"'{path}' holds no checkpoint (no {CHECKPOINTS_DIR}/step-* folder, no {MODEL_FILE}); "
            "pass the directory that `ecar train --out` wrote"
        )
    first_error: CheckpointError | None = None
    for i, d in enumerate(found):
        try:
            ck = _load_one(d, with_ema, with_state, weights, with_model)
        except CheckpointError as e:
            first_error = first_error or e
            if i + 1 < len(found):
                log.warning("skipping checkpoint %s: %s; trying the next older one", d, e)
            continue
        _report_unfinished(root, ck.step)
        if i:
            log.warning("loaded %s (step %d): the newest checkpoint of %s that loads", d, ck.step, path)
        return ck
    if len(found) > 1:
        raise CheckpointError(f"no checkpoint of '{path}' loads ({len(found)} tried; newest: {first_error})")
    raise first_error


def load_checkpoint(path: str | Path, with_ema: bool = True, with_state: bool = False,
                    with_model: bool = True) -> Checkpoint:
    """The newest checkpoint under ``path`` that loads: a run directory (either layout), its
    ``checkpoints/`` folder, or one checkpoint's folder (then that one, no fallback).

    ``with_ema=False`` reads the model weights alone (``ema_state`` is None, the EMA file is
    not opened); ``with_model=False`` reads the EMA weights alone where there are some
    (``model_state`` is then empty). Inference reads only the weights it will use.

    Every checkpoint skipped on the way (damaged, or an unfinished save) is logged as a
    warning. ``with_state`` also reads ``train_state.pt`` (to resume), and a checkpoint
    whose state does not load is skipped like any other.
    """
    return _newest(path, with_ema, with_state, weights=True, with_model=with_model)


def find_checkpoint(path: str | Path) -> Checkpoint:
    """What :func:`load_checkpoint` would load, checked from the files' metadata without reading
    the tensors (``model_state`` is empty): its ``directory``, ``cfg`` and ``step``."""
    return _newest(path, with_ema=True, with_state=False, weights=False)


def load_train_state(directory: str | Path, expected_step: int) -> dict[str, Any]:
    """``train_state.pt`` of one checkpoint folder, checked to be of ``expected_step``."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {STATE_FILE}: it cannot be resumed (weights only)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(f"{path} could not be read ({load_refusal(e)}); the checkpoint is damaged") from None
    if state.get("step") != expected_step:
        raise CheckpointError(
            f"{path} is at step {state.get('step')} but the weights are at step {expected_step}; "
            "the last save was interrupted"
        )
    if state.get("optimizer_format") == "dcp" and not (Path(directory) / SHARDED_DIR / ".metadata").is_file():
        raise CheckpointError(
            f"{directory} has no {SHARDED_DIR}/.metadata (the optimizer state of a train.parallel=fsdp "
            "run); the checkpoint is damaged"
        )
    return state


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with an error that explains a mismatch instead of a traceback."""
    check_state_fits(module, state, what)
    module.load_state_dict(state)


def check_state_fits(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` saying why ``state`` does not fit ``module`` (keys, shapes)."""
    why = state_mismatch(module, state)
    if why:
        raise CheckpointError(
            f"{what} does not fit the model its config describes: {why}. "
            "Was the checkpoint written by another model or an edited config.yaml?"
        )
