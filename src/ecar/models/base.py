"""What every network shares: the latent it models and the transformer fields of its config."""

from __future__ import annotations

from dataclasses import dataclass

from ecar.errors import ConfigError


@dataclass
class LatentSpec:
    """What the generator models: ``channels``×``size``×``size`` latents, ``num_classes`` labels."""

    channels: int
    size: int
    num_classes: int


@dataclass
class TransformerConfig:
    """Fields every transformer network shares (registry entries fill them; recipes override)."""

    name: str = ""
    hidden: int = 64
    depth: int = 2
    heads: int = 4
    patch: int = 2
    mlp_ratio: float = 4.0
    qk_norm: bool = False

    def validate(self) -> None:
        if self.hidden % self.heads or self.hidden % 4:
            raise ConfigError(
                f"model.hidden={self.hidden} must be divisible by model.heads={self.heads} and by 4"
            )
        if min(self.depth, self.patch, self.heads) < 1:
            raise ConfigError("model.depth, model.patch and model.heads must be >= 1")
