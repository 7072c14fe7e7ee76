"""One typed config tree: a dataclass per component, YAML recipes, ``key=value`` overrides.

A recipe is a YAML mapping with the sections of :class:`Config`. Every key is checked:
an unknown key is an error that names the valid keys of its section, and a value of the
wrong type is an error that names the expected type. The fully resolved config (registry
defaults merged in) is saved inside every checkpoint as ``config.yaml``.

The ``model`` section is special: ``model.name`` picks an entry of the model registry
(:mod:`ecar.models.registry`); the entry fixes the family (``dit``, ``ecar``) and its
dataclass, whose fields may then be overridden in the recipe or on the command line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the config tree (message says what to do)."""


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
class AutoencoderConfig:
    """Image <-> latent map. ``identity`` models pixels in [-1, 1]."""

    name: str = "identity"
    path: str | None = None
    """Directory of pretrained weights for autoencoders that need them."""
    scale: float = 1.0
    """Latents are multiplied by this after encoding (and divided before decoding)."""


@dataclass
class FlowConfig:
    """Flow-matching training choices shared by all families."""

    time_sampling: str = "logit_normal"
    """``uniform`` or ``logit_normal`` (SD3-style, density on the middle of the path)."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    class_dropout: float = 0.1
    """Probability of replacing the label by the null class (enables classifier-free guidance)."""


@dataclass
class SampleConfig:
    """Sampler settings shipped with a recipe (the CLI may override them)."""

    sampler: str = "euler"
    """``euler`` | ``heun`` | ``euler_maruyama``."""
    steps: int = 50
    """DiT: integration steps over [0, 1]. E-CAR/FlowAR: steps per stage unless ``stage_steps``."""
    stage_steps: list[int] | None = None
    """E-CAR/FlowAR: explicit step count for each stage (coarse to fine)."""
    cfg: float = 1.0
    """Classifier-free guidance scale (1 = no guidance)."""
    cfg_schedule: str = "constant"
    """``constant`` or ``linear`` (ramps from 1 to ``cfg`` over time / stages)."""
    cfg_interval: list[float] | None = None
    """[lo, hi]: guide only where the sampling progress (DiT: time t, 0 = noise; E-CAR /
    FlowAR: stage index / (stages − 1)) lies in [lo, hi]; elsewhere no unconditional branch
    runs. None = everywhere."""
    noise_scale: float = 1.0
    """Euler-Maruyama only: diffusion coefficient multiplier."""


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
    tensorboard: bool = True
    """Also log to TensorBoard when the ``tensorboard`` package is installed."""


@dataclass
class Config:
    """The whole run: data, autoencoder, model, flow, sampler, training."""

    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    model: Any = None
    """A family dataclass (e.g. :class:`ecar.models.dit.DiTConfig`) chosen by ``model.name``."""
    flow: FlowConfig = field(default_factory=FlowConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to annotation ``tp``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {tp!r}")


def dataclass_from_dict(cls: type, data: dict | None, where: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``data``, starting from ``base`` (or the defaults).

    Unknown keys raise :class:`ConfigError` listing the valid keys of the section.
    """
    obj = dataclasses.replace(base) if base is not None else cls()
    if data is None:
        return obj
    if not isinstance(data, dict):
        raise ConfigError(f"section '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"unknown key '{where}.{key}'. Valid keys of '{where}': {', '.join(names)}"
            )
        setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _validate_choices(cfg: Config) -> None:
    checks = [
        ("flow.time_sampling", cfg.flow.time_sampling, ("uniform", "logit_normal")),
        ("sample.sampler", cfg.sample.sampler, ("euler", "heun", "euler_maruyama")),
        ("sample.cfg_schedule", cfg.sample.cfg_schedule, ("constant", "linear")),
        ("train.schedule", cfg.train.schedule, ("cosine", "constant")),
        ("train.precision", cfg.train.precision, ("fp32", "bf16")),
    ]
    for where, value, valid in checks:
        if value not in valid:
            raise ConfigError(f"{where}={value!r} is not valid; choose one of: {', '.join(valid)}")
    t = cfg.train
    if t.max_minutes < 0:
        raise ConfigError("train.max_minutes must be >= 0 (0 = no time budget)")
    if t.max_steps < 1 or t.batch_size < 1 or t.grad_accum < 1:
        raise ConfigError("train.max_steps, train.batch_size and train.grad_accum must be >= 1")
    if not 0.0 <= cfg.flow.class_dropout < 1.0:
        raise ConfigError("flow.class_dropout must be in [0, 1)")
    if cfg.sample.steps < 1:
        raise ConfigError("sample.steps must be >= 1")
    check_cfg_interval(cfg.sample.cfg_interval)


def check_cfg_interval(iv, where: str = "sample.cfg_interval") -> None:
    """Raise :class:`ConfigError` unless ``iv`` is None or [lo, hi] with 0 <= lo <= hi <= 1."""
    if iv is not None and (
        not isinstance(iv, (list, tuple)) or len(iv) != 2
        or not all(isinstance(v, (int, float)) for v in iv) or not 0 <= iv[0] <= iv[1] <= 1
    ):
        raise ConfigError(f"{where} must be [lo, hi] with 0 <= lo <= hi <= 1, got {iv!r}")


SECTIONS = {
    "data": DataConfig,
    "autoencoder": AutoencoderConfig,
    "flow": FlowConfig,
    "sample": SampleConfig,
    "train": TrainConfig,
}


def config_from_dict(raw: dict) -> Config:
    """Resolve a raw mapping (recipe + overrides merged) into a validated :class:`Config`."""
    from ecar.models.registry import resolve_model_config

    if not isinstance(raw, dict):
        raise ConfigError("a config must be a YAML mapping of sections")
    valid = list(SECTIONS) + ["model"]
    for key in raw:
        if key not in valid:
            raise ConfigError(f"unknown section '{key}'. Valid sections: {', '.join(valid)}")
    cfg = Config()
    for name, cls in SECTIONS.items():
        setattr(cfg, name, dataclass_from_dict(cls, raw.get(name), name))
    cfg.model = resolve_model_config(raw.get("model"))
    _validate_choices(cfg)
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.lr=3e-4'`` -> (['train', 'lr'], 0.0003). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override key '{key}' must look like section.key (e.g. train.lr)")
    parsed = yaml.safe_load(value) if value.strip() != "" else None
    if isinstance(parsed, str) and parsed.lower() in ("none", "null"):
        parsed = None
    return parts, parsed


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
