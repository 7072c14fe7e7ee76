"""Networks: pure ``nn.Module``s, one file per network, and the heads they share.

Named sizes and how each network is trained and sampled live in :mod:`ecar.methods`.
"""

from ecar.models.base import LatentSpec, TransformerConfig
from ecar.models.dit import DiT, DiTConfig
from ecar.models.ecar import ECAR, ECARConfig
from ecar.models.heads import TokenHead, x_to_velocity

__all__ = ["DiT", "DiTConfig", "ECAR", "ECARConfig", "LatentSpec", "TokenHead", "TransformerConfig",
           "x_to_velocity"]
