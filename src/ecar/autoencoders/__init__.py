"""Image <-> latent maps. ``identity`` works in pixel space (images scaled to [-1, 1])."""

from __future__ import annotations

from ecar.autoencoders.base import Autoencoder, AutoencoderConfig, IdentityAutoencoder
from ecar.autoencoders.taef2 import TAEF2Autoencoder
from ecar.errors import ConfigError

__all__ = ["Autoencoder", "AutoencoderConfig", "IdentityAutoencoder", "TAEF2Autoencoder", "build_autoencoder"]


def build_autoencoder(cfg: AutoencoderConfig, image_channels: int) -> Autoencoder:
    if cfg.name == "identity":
        return IdentityAutoencoder(image_channels, cfg.scale)
    if cfg.name == "taef2":
        return TAEF2Autoencoder.from_config(cfg, image_channels)
    raise ConfigError(f"unknown autoencoder.name '{cfg.name}'; choose identity or taef2")
