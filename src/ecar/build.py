"""Assemble the parts a config describes: dataset, autoencoder, model; load a trained model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ecar.autoencoders import build_autoencoder
from ecar.config import Config, ConfigError
from ecar.models.registry import Family, family_of


@dataclass
class LatentSpec:
    """What the generator models: ``channels``×``size``×``size`` latents, ``num_classes`` labels."""

    channels: int
    size: int
    num_classes: int


def build_data(cfg: Config, split: str = "train"):
    """The dataset ``cfg.data`` names; fills in its resolution/channels/classes in ``cfg``."""
    from ecar.data import build_dataset

    d = cfg.data
    ds = build_dataset(
        d.name, split=split, resolution=d.resolution, channels=d.channels, seed=d.seed,
        shapes_size=d.shapes_size,
    )
    if d.num_classes is not None and d.num_classes != ds.num_classes:
        raise ConfigError(
            f"data.num_classes={d.num_classes} but dataset '{d.name}' has {ds.num_classes} classes"
        )
    d.resolution, d.channels, d.num_classes = ds.resolution, ds.channels, ds.num_classes
    return ds


def latent_spec(cfg: Config, autoencoder: nn.Module | None = None) -> LatentSpec:
    """Latent shape from a config whose data section is resolved (see :func:`build_data`)."""
    d = cfg.data
    if d.resolution is None or d.channels is None or d.num_classes is None:
        raise ConfigError("data.resolution, data.channels and data.num_classes are not resolved")
    ae = autoencoder or build_autoencoder(cfg.autoencoder, d.channels)
    return LatentSpec(ae.latent_channels(), ae.latent_size(d.resolution), d.num_classes)


def build_model(cfg: Config, spec: LatentSpec) -> tuple[nn.Module, Family]:
    fam = family_of(cfg.model)
    return fam.build(cfg, spec.channels, spec.size, spec.num_classes), fam


@dataclass
class LoadedModel:
    cfg: Config
    model: nn.Module
    family: Family
    autoencoder: nn.Module
    step: int

    @property
    def num_classes(self) -> int:
        return self.cfg.data.num_classes


def load_for_inference(ckpt_dir: str, device: torch.device, use_ema: bool = True) -> LoadedModel:
    """Build the model a checkpoint's config describes and load its (EMA) weights."""
    from ecar.train.checkpoint import CheckpointError, load_checkpoint, load_state_into

    ck = load_checkpoint(ckpt_dir)
    cfg = ck.cfg
    try:
        ae = build_autoencoder(cfg.autoencoder, cfg.data.channels or 3)
        model, fam = build_model(cfg, latent_spec(cfg, ae))
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_dir}: its config does not build a model: {e}") from None
    state = ck.ema_state if (use_ema and ck.ema_state is not None) else ck.model_state
    load_state_into(model, state, f"checkpoint '{ckpt_dir}'")
    model.to(device).eval()
    ae.to(device).eval()
    return LoadedModel(cfg, model, fam, ae, ck.step)
