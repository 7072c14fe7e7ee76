"""Writing a checkpoint as one unit: its four files into a hidden folder, one rename to
commit it, then pruning (see :mod:`ecar.checkpoint`)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save
from torch import nn

from ecar.config import Config, config_to_yaml
from ecar.methods import method_of
from ecar.serialization import (
    fsync_dir,
    hidden_temp_name,
    remove_tree,
    write_new_file,
)
from ecar.checkpoint.layout import (
    CHECKPOINTS_DIR,
    CHECKPOINT_FILES,
    CONFIG_FILE,
    EMA_FILE,
    META_KEY,
    MODEL_FILE,
    SHARDED_DIR,
    STATE_FILE,
    _ecar_weights,
    _step_dirs,
    log,
    pause_for_tests,
    step_dir_name,
)

def _state_bytes(module_or_state: nn.Module | dict, meta: dict[str, str]) -> bytes:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return save(tensors, metadata=meta)


# --------------------------------------------------------------------------- run directories

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
