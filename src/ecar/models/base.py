"""What every network shares: the latent it models and the transformer fields of its config."""

from __future__ import annotations

from dataclasses import dataclass

from ecar.errors import ConfigError, shown


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
        """Ranges and relations of the fields alone (the latent is checked by
        :meth:`validate_latent` once it is known)."""
        for name in ("hidden", "depth", "patch", "heads"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"model.{name}={shown(value)} is not valid: it must be >= 1")
        if self.hidden % self.heads or self.hidden % 4:
            raise ConfigError(
                f"model.hidden={self.hidden} must be divisible by model.heads={self.heads} and by 4"
            )
        if not self.mlp_ratio * self.hidden >= 1:
            raise ConfigError(f"model.mlp_ratio={self.mlp_ratio} is not valid: the MLP of "
                              f"model.hidden={self.hidden} needs mlp_ratio·hidden >= 1 (4 is usual)")

    def validate_latent(self, size: int) -> None:
        """Raise :class:`ConfigError` unless the network can model ``size``×``size`` latents
        (the data section's resolution through the autoencoder): the patch must tile them.

        Called where the latent size becomes known (:func:`ecar.build.build_model`), so a
        mismatch between sections is reported as a config error naming both fields instead
        of an error from inside the network's constructor.
        """
        if size < 1 or size % self.patch:
            raise ConfigError(
                f"the latent side {size} (set by data.resolution and the autoencoder) is not "
                f"divisible by model.patch={self.patch}: choose a resolution whose latent is a "
                f"multiple of {self.patch}, or another model.patch"
            )
