"""Reading checkpoints: the newest complete one of a run (every one skipped is logged), its
config, weights and train state, and loading weights into a network (see :mod:`ecar.checkpoint`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from ecar.config import Config, ConfigError, config_from_dict, load_yaml
from ecar.methods import method_of
from ecar.serialization import (
    load_refusal,
    state_mismatch,
)
from ecar.checkpoint.layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    CheckpointError,
    EMA_FILE,
    META_KEY,
    MODEL_FILE,
    SHARDED_DIR,
    STATE_FILE,
    _STEP_DIR,
    _UNFINISHED,
    _candidates,
    is_run,
    log,
)

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
    assert first_error is not None  # every candidate failed
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
