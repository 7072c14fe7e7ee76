"""The autoencoder config, what every autoencoder provides, and the identity map (pixel space)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ecar.schema import check_choice, check_range

AUTOENCODER_NAMES = ("identity", "taef2")


@dataclass
class AutoencoderConfig:
    """Image <-> latent map. ``identity`` models pixels in [-1, 1]."""

    name: str = "identity"
    path: str | None = None
    """Directory of pretrained weights for autoencoders that need them."""
    scale: float = 1.0
    """Latents are multiplied by this after encoding (and divided before decoding)."""

    def validate(self) -> None:
        check_choice("autoencoder.name", self.name, AUTOENCODER_NAMES)
        check_range("autoencoder.scale", self.scale, 0, low_open=True)


class Autoencoder(nn.Module):
    """Image <-> latent map: what the trainer, the latent cache and the pipeline use of one.
    ``downsample``: image pixels per latent pixel along a side."""

    downsample: int

    def latent_channels(self) -> int:
        raise NotImplementedError

    def latent_size(self, resolution: int) -> int:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images in [-1, 1] -> latents."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents -> (B, C, H, W) images in [-1, 1] (not clamped)."""
        raise NotImplementedError


class IdentityAutoencoder(Autoencoder):
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
