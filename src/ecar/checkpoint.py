"""Checkpoints: a directory with model/EMA weights (safetensors), config.yaml and train_state.pt.

Every file is written atomically (temporary file in the same directory, fsync, rename),
weights first and ``train_state.pt`` last. Each weights file carries the step in its
metadata, and loading checks that all files agree, so a run killed in the middle of a
save is detected instead of silently mixing two steps.
"""

from __future__ import annotations

import io
import json
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
from ecar.serialization import atomic_write, load_refusal, state_mismatch

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.yaml"
STATE_FILE = "train_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete, or does not fit the model it should load into."""


def _state_bytes(module_or_state: nn.Module | dict, meta: dict[str, str]) -> bytes:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    return save(tensors, metadata=meta)


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    ema: nn.Module,
    cfg: Config,
    step: int,
    train_state: dict[str, Any],
) -> Path:
    """Write the four files of a checkpoint into ``directory`` (atomically, state file last)."""
    directory = Path(directory)
    # one metadata key holding sorted JSON: safetensors stores a hash map, whose order (and so
    # the file's bytes) would otherwise vary between two saves of the same weights
    meta = {"ecar": json.dumps(
        {"step": step, "family": method_of(cfg.model).family, "model": cfg.model.name}, sort_keys=True
    )}
    atomic_write(directory / MODEL_FILE, _state_bytes(model, meta))
    atomic_write(directory / EMA_FILE, _state_bytes(ema, meta))
    atomic_write(directory / CONFIG_FILE, config_to_yaml(cfg).encode())
    buf = io.BytesIO()
    torch.save({**train_state, "step": step}, buf)
    atomic_write(directory / STATE_FILE, buf.getvalue())
    return directory


@dataclass
class Checkpoint:
    directory: Path
    cfg: Config
    step: int
    family: str
    model_state: dict[str, torch.Tensor]
    ema_state: dict[str, torch.Tensor] | None


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / MODEL_FILE).is_file()


def read_config(directory: str | Path) -> Config:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}; is it an ecar checkpoint directory?")
    try:  # load_yaml bounds the document: a config.yaml is user input too
        return config_from_dict(load_yaml(path) or None)
    except (ConfigError, yaml.YAMLError) as e:
        raise CheckpointError(f"{path} does not hold a valid ecar config: {e}") from None


def _load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("ecar", "{}")
        meta = {k: str(v) for k, v in json.loads(raw).items()}
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); the checkpoint is damaged") from None


def load_checkpoint(directory: str | Path, with_ema: bool = True) -> Checkpoint:
    """Read a checkpoint directory and check that its files agree with each other."""
    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory '{directory}' does not exist")
    if not (directory / MODEL_FILE).is_file():
        raise CheckpointError(
            f"'{directory}' has no {MODEL_FILE}; pass the directory that `ecar train --out` wrote"
        )
    cfg = read_config(directory)
    model_state, meta = _load_weights(directory / MODEL_FILE)
    ema_state = None
    if with_ema and (directory / EMA_FILE).is_file():
        ema_state, ema_meta = _load_weights(directory / EMA_FILE)
        if ema_meta.get("step") != meta.get("step"):
            raise CheckpointError(
                f"{directory}: {MODEL_FILE} (step {meta.get('step')}) and {EMA_FILE} "
                f"(step {ema_meta.get('step')}) disagree; the last save was interrupted"
            )
    family = method_of(cfg.model).family
    if meta.get("family") and meta["family"] != family:
        raise CheckpointError(
            f"{directory}: weights are of model family '{meta['family']}' but config.yaml "
            f"describes family '{family}'; the files come from different runs"
        )
    return Checkpoint(directory, cfg, int(meta.get("step", 0)), family, model_state, ema_state)


def load_train_state(directory: str | Path, expected_step: int) -> dict[str, Any]:
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
    return state


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``load_state_dict`` with an error that explains a mismatch instead of a traceback."""
    why = state_mismatch(module, state)
    if why:
        raise CheckpointError(
            f"{what} does not fit the model its config describes: {why}. "
            "Was the checkpoint written by another model or an edited config.yaml?"
        )
    module.load_state_dict(state)
