"""Image <-> latent maps. ``identity`` works in pixel space (images scaled to [-1, 1])."""

from __future__ import annotations

import torch
from torch import nn

from ecar.config import AutoencoderConfig, ConfigError


class IdentityAutoencoder(nn.Module):
    """Pixels are the latent: encode/decode are the identity (times ``scale``)."""

    downsample = 1

    def __init__(self, image_channels: int, scale: float = 1.0):
        super().__init__()
        self.image_channels = image_channels
        self.scale = scale

    def latent_channels(self) -> int:
        return self.image_channels

    def latent_size(self, resolution: int) -> int:
        return resolution

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> latents."""
        return images * self.scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> (B, C, H, W) images in [-1, 1] (not clamped)."""
        return latents / self.scale


def build_autoencoder(cfg: AutoencoderConfig, image_channels: int) -> nn.Module:
    if cfg.name == "identity":
        return IdentityAutoencoder(image_channels, cfg.scale)
    if cfg.name == "taef2":
        from ecar.autoencoders.taef2 import TAEF2Autoencoder

        return TAEF2Autoencoder.from_config(cfg, image_channels)
    raise ConfigError(f"unknown autoencoder.name '{cfg.name}'; choose identity or taef2")
