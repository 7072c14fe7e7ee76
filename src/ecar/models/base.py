"""What every network shares: the latent it models, the transformer fields of its config, the
null label of classifier-free guidance and the initialisation of its input layers."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ecar.errors import ConfigError, shown
from ecar.layers import LabelEmbedder

__all__ = ["ClassConditional", "LatentSpec", "TransformerConfig", "init_input_layers"]


class ClassConditional(nn.Module):
    """Base of every network: conditioned on ``num_classes`` labels, and on the null label
    ``num_classes`` (:attr:`null_class`) that classifier-free guidance and label dropout use."""

    num_classes: int

    @property
    def null_class(self) -> int:
        return self.num_classes


def init_input_layers(embed: nn.Linear, labels: LabelEmbedder | None = None) -> None:
    """The initialisation every network gives its token embedding (Xavier-uniform weights, zero
    bias) and, given, its label table (normal, std 0.02), in that order of random draws."""
    nn.init.xavier_uniform_(embed.weight)
    nn.init.zeros_(embed.bias)
    if labels is not None:
        nn.init.normal_(labels.table.weight, std=0.02)


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
