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

Validation happens here, once, where a recipe enters (docs/errors.md): types and
finiteness in :mod:`ecar.schema`, ranges and choices in each section's ``validate()``,
relations between fields of one section there too. Two checks need more than the config
and run where that becomes known, still as :class:`ConfigError`: whether the model fits
the latent (``validate_latent`` of the model config, when the dataset fixes the image
size) and whether a device is available (:func:`ecar.device.pick_device`; a checkpoint
trained on CUDA must still load for sampling on a CPU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ecar.autoencoders import AutoencoderConfig
from ecar.device import check_device_name
from ecar.errors import ConfigError, shown
from ecar.flow import FlowConfig
from ecar.methods import resolve_model_config, resolve_sample_config
from ecar.samplers import SampleConfig, check_cfg_interval
from ecar.schema import check_choice, check_range, dataclass_from_dict, load_yaml_text, parse_override

__all__ = [
    "AutoencoderConfig", "Config", "ConfigError", "DataConfig", "FlowConfig", "SampleConfig",
    "TrainConfig", "check_cfg_interval", "config_from_dict", "config_to_dict", "config_to_yaml",
    "dataclass_from_dict", "load_config", "load_yaml", "merge_overrides", "parse_override",
]


SEED_LIMIT = 2**32
"""Seeds are integers in [0, 2³²): what every generator of torch and numpy accepts."""


@dataclass
class DataConfig:
    """Where training images come from."""

    name: str = "digits"
    """``digits`` | ``shapes`` | ``fashion-mini`` (8,000 Fashion-MNIST images shipped in the
    package: ``ecar demo``'s data) | ``fashion-mnist`` (or ``fashion-mnist:DIR``, the folder of
    its IDX files; default ``$ECAR_FASHION_MNIST``, then the Debian package's
    ``/usr/share/datasets/fashion-mnist``) | ``imagefolder:PATH`` | ``latents:DIR`` (a cache
    of training latents made by ``ecar cache-latents``; samples and FID use the images it
    was encoded from)."""
    resolution: int | None = None
    """Image side in pixels; ``None`` keeps the dataset's native size (digits 16, shapes 32,
    fashion-mnist and fashion-mini 32 = their 28×28 images padded by 2 px of black)."""
    channels: int | None = None
    """1 (grey) or 3 (RGB) for ``imagefolder``; ``None`` keeps the dataset's own."""
    num_classes: int | None = None
    """Filled in from the dataset when training starts (recorded in checkpoints)."""
    num_workers: int = 0
    """DataLoader worker processes (0 = load in the training process)."""
    hflip: bool = False
    """Train on every image and its left-right mirror image (the set doubles; a fixed copy,
    not a random flip, so the data order stays deterministic). ``ecar cache-latents``
    encodes both copies."""
    shapes_size: int = 50_000
    """Number of images in the procedural ``shapes`` dataset (generated on the fly)."""
    seed: int = 0
    """Seed of the dataset itself (the ``shapes`` renderer)."""

    def validate(self) -> None:
        if self.channels is not None and self.channels not in (1, 3):
            raise ConfigError(f"data.channels={shown(self.channels)} is not valid: use 1 (grey), 3 (RGB) "
                              "or null (the dataset's own)")
        check_range("data.resolution", self.resolution, 1, meaning="pixels; null = the dataset's own")
        check_range("data.num_classes", self.num_classes, 1, meaning="null = from the dataset")
        check_range("data.num_workers", self.num_workers, 0, meaning="0 = load in the training process")
        check_range("data.shapes_size", self.shapes_size, 1)
        check_range("data.seed", self.seed, 0, SEED_LIMIT, high_open=True)


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
    parallel: str = "ddp"
    """How ``torchrun`` ranks share the work: ``ddp`` (every rank holds the whole model and
    optimizer; gradients are averaged) or ``fsdp`` (FSDP2 ``fully_shard`` per transformer
    block and at the root: parameters, gradients, optimizer state and EMA are split over the
    ranks; checkpoints carry the optimizer state via ``torch.distributed.checkpoint``, so a
    run saved on N processes resumes on any M). One process trains the same either way."""
    compile: bool = False
    """``torch.compile`` the objective (network + loss) before training (ddp and fsdp)."""

    def validate(self) -> None:
        check_choice("train.schedule", self.schedule, ("cosine", "constant"))
        check_choice("train.precision", self.precision, ("fp32", "bf16"))
        check_choice("train.parallel", self.parallel, ("ddp", "fsdp"))
        check_device_name(self.device, "train.device")
        check_range("train.max_minutes", self.max_minutes, 0, meaning="0 = no time budget")
        for name in ("max_steps", "batch_size", "grad_accum", "log_every"):
            check_range(f"train.{name}", getattr(self, name), 1)
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.batch_size={self.batch_size} must be divisible by "
                              f"train.grad_accum={self.grad_accum} (the batch is split into that many micro-batches)")
        check_range("train.lr", self.lr, 0, low_open=True)
        check_range("train.weight_decay", self.weight_decay, 0)
        check_range("train.beta1", self.beta1, 0, 1, high_open=True)
        check_range("train.beta2", self.beta2, 0, 1, high_open=True)
        check_range("train.warmup_steps", self.warmup_steps, 0)
        check_range("train.min_lr_ratio", self.min_lr_ratio, 0, 1, meaning="the cosine ends at min_lr_ratio·lr")
        check_range("train.grad_clip", self.grad_clip, 0, meaning="0 = no clipping")
        check_range("train.ema_decay", self.ema_decay, 0, 1, high_open=True,
                    meaning="0 = EMA equals the weights; 0.999 is typical")
        check_range("train.seed", self.seed, 0, SEED_LIMIT, high_open=True)
        check_range("train.sample_every", self.sample_every, 0, meaning="0 = only at the end")
        check_range("train.ckpt_every", self.ckpt_every, 0, meaning="0 = only at the end")
        check_range("train.keep_last", self.keep_last, 1, meaning="checkpoints kept")


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


def config_from_dict(raw: dict | None) -> Config:
    """Resolve a raw mapping (recipe + overrides merged) into a validated :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a YAML mapping of sections, got {shown(raw)}")
    valid = [f.name for f in dataclasses.fields(Config)]
    for key, value in raw.items():
        if key not in valid:
            name = key if isinstance(key, str) and len(key) <= 40 else shown(key)
            raise ConfigError(f"unknown section '{name}'. Valid sections: {', '.join(valid)}")
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"section '{key}' must be a mapping of keys to values (e.g. "
                              f"'{key}:' then indented 'key: value' lines), got {shown(value)}")
    cfg = Config()
    for name, cls in SECTIONS.items():
        setattr(cfg, name, dataclass_from_dict(cls, raw.get(name), name))
    cfg.model = resolve_model_config(raw.get("model"))
    cfg.sample = resolve_sample_config(cfg.model, raw.get("sample"))
    return cfg


def merge_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides to a raw recipe mapping (a copy is returned)."""
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"a config must be a YAML mapping of sections, got {shown(raw)}")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        sec = out.setdefault(section, {})
        if sec is None:
            sec = out[section] = {}
        if not isinstance(sec, dict):
            raise ConfigError(f"section '{section}' is not a mapping (got {shown(sec)}), so "
                              f"'{section}.{key}' cannot be set")
        if section == "model" and key == "name" and sec.get("name") != value:
            # a new model name drops overrides written for the previous entry
            sec = out[section] = {}
        sec[key] = value
    return out


MAX_CONFIG_BYTES = 1 << 20
"""Largest recipe file read (recipes are a few kB; a bigger file is not a recipe)."""


def load_yaml(path: str | Path) -> dict:
    """The mapping of a recipe file; anything else (a list, a scalar, binary or non-UTF-8
    bytes, a huge or hostile document) is a :class:`ConfigError` naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a folder; give a recipe file (e.g. configs/digits_ecar.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist (recipes live in configs/)")
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"config file '{path}' cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file '{path}' is larger than {MAX_CONFIG_BYTES >> 20} MiB; is it a recipe?")
    if b"\0" in data:
        raise ConfigError(f"config file '{path}' is a binary file, not a YAML recipe")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    raw = load_yaml_text(text, f"config file '{path}'")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections (data:, model:, "
                          f"train:, ...), but its top level is a {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a recipe and apply overrides. ``path=None`` starts from the defaults."""
    raw = load_yaml(path) if path is not None else {}
    return config_from_dict(merge_overrides(raw, list(overrides or [])))


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
