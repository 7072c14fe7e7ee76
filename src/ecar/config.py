"""One typed config tree: a dataclass per component, YAML recipes, ``key=value`` overrides.

A recipe is a YAML mapping with the sections of :class:`Config`. Every key is checked:
an unknown key is an error that names the valid keys of its section, and a value of the
wrong type is an error that names the expected type (:mod:`ecar.schema`). The fully
resolved config (registry defaults merged in) is saved inside every checkpoint as
``config.yaml``.

Each section's dataclass lives with the code that reads it: ``flow`` is
:class:`ecar.flow.FlowConfig`, ``autoencoder`` :class:`ecar.autoencoders.AutoencoderConfig`;
``data`` and ``train`` are here. Two sections belong to the method (:mod:`ecar.methods`):
``model.name`` picks an entry of the model registry, which fixes the method and its config
dataclass, whose fields may then be overridden in the recipe or on the command line; the
``sample`` section is that method's sampling settings (a
:class:`ecar.samplers.SampleConfig` subclass). A sampling setting of another method given
as null counts as not set (checkpoints written before the split store them so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecar.autoencoders import AutoencoderConfig
from ecar.errors import ConfigError
from ecar.flow import FlowConfig
from ecar.methods import resolve_model_config, resolve_sample_config
from ecar.samplers import SampleConfig, check_cfg_interval
from ecar.schema import check_choice, dataclass_from_dict, parse_override

__all__ = [
    "AutoencoderConfig", "Config", "ConfigError", "DataConfig", "FlowConfig", "SampleConfig",
    "TrainConfig", "check_cfg_interval", "config_from_dict", "config_to_dict", "config_to_yaml",
    "dataclass_from_dict", "load_config", "load_yaml", "merge_overrides", "parse_override",
]


@dataclass
class DataConfig:
    """Where training images come from."""

    name: str = "digits"
    """``digits`` | ``shapes`` | ``fashion-mnist`` (or ``fashion-mnist:DIR``, the folder of
    its IDX files; default ``$ECAR_FASHION_MNIST``, then the Debian package's
    ``/usr/share/datasets/fashion-mnist``) | ``imagefolder:PATH``."""
    resolution: int | None = None
    """Image side in pixels; ``None`` keeps the dataset's native size (digits 16, shapes 32,
    fashion-mnist 32 = its 28×28 images padded by 2 px of black)."""
    channels: int | None = None
    """1 (grey) or 3 (RGB) for ``imagefolder``; ``None`` keeps the dataset's own."""
    num_classes: int | None = None
    """Filled in from the dataset when training starts (recorded in checkpoints)."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    shapes_size: int = 50_000
    """Number of images in the procedural ``shapes`` dataset (generated on the fly)."""
    seed: int = 0
    """Seed of the dataset itself (the ``shapes`` renderer)."""


@dataclass
class TrainConfig:
    """Optimisation and run-keeping."""

    max_steps: int = 1000
    max_minutes: float = 0.0
    """Wall-clock training budget (0 = none). With a budget, training stops at whichever of
    max_steps / max_minutes comes first and the LR schedule follows the larger of the two
    progress fractions (so the cosine still completes); such runs are not bitwise resumable."""
    batch_size: int = 64
    """Global batch per optimiser step (split over ranks and accumulation micro-steps)."""
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    warmup_steps: int = 100
    schedule: str = "cosine"
    """``cosine`` (to ``min_lr_ratio``·lr) or ``constant`` after warm-up."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    ema_decay: float = 0.999
    ema_warmup: bool = True
    """Use decay min(ema_decay, (1+step)/(10+step)) so early EMA weights are usable."""
    precision: str = "fp32"
    """``fp32`` or ``bf16`` (autocast; falls back to fp32 with a warning where unsupported)."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    seed: int = 0
    log_every: int = 10
    sample_every: int = 0
    """Write a sample grid every N steps (0 = only at the end)."""
    ckpt_every: int = 0
    """Save a checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints kept in RUN/checkpoints/ (the newest ones); older ones are removed only after
    a newer one is complete, so a crash never leaves a run without one."""
    tensorboard: bool = True
    """Also log to TensorBoard when the ``tensorboard`` package is installed."""

    def validate(self) -> None:
        check_choice("train.schedule", self.schedule, ("cosine", "constant"))
        check_choice("train.precision", self.precision, ("fp32", "bf16"))
        if self.max_minutes < 0:
            raise ConfigError("train.max_minutes must be >= 0 (0 = no time budget)")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("train.max_steps, train.batch_size and train.grad_accum must be >= 1")
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be >= 1 (checkpoints kept), got {self.keep_last}")


@dataclass
class Config:
    """The whole run: data, autoencoder, model, flow, sampler, training."""

    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    model: Any = None
    """The method's model dataclass (e.g. :class:`ecar.models.dit.DiTConfig`) chosen by ``model.name``."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    sample: Any = None
    """The method's sampling settings (a :class:`ecar.samplers.SampleConfig` subclass)."""
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {
    "data": DataConfig,
    "autoencoder": AutoencoderConfig,
    "flow": FlowConfig,
    "train": TrainConfig,
}
"""Sections with a fixed dataclass; ``model`` and ``sample`` are the method's."""


def config_from_dict(raw: dict) -> Config:
    """Resolve a raw mapping (recipe + overrides merged) into a validated :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError("a config must be a YAML mapping of sections")
    valid = [f.name for f in dataclasses.fields(Config)]
    for key in raw:
        if key not in valid:
            raise ConfigError(f"unknown section '{key}'. Valid sections: {', '.join(valid)}")
    cfg = Config()
    for name, cls in SECTIONS.items():
        setattr(cfg, name, dataclass_from_dict(cls, raw.get(name), name))
    cfg.model = resolve_model_config(raw.get("model"))
    cfg.sample = resolve_sample_config(cfg.model, raw.get("sample"))
    return cfg


def merge_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides to a raw recipe mapping (a copy is returned)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        sec = out.setdefault(section, {})
        if not isinstance(sec, dict):
            raise ConfigError(f"section '{section}' is not a mapping")
        if section == "model" and key == "name" and sec.get("name") != value:
            # a new model name drops overrides written for the previous entry
            sec = out[section] = {}
        sec[key] = value
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist (recipes live in configs/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    return data or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a recipe and apply overrides. ``path=None`` starts from the defaults."""
    raw = load_yaml(path) if path is not None else {}
    return config_from_dict(merge_overrides(raw, list(overrides or [])))


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
