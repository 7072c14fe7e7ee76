"""MAR: a bidirectional transformer over the token grid with learned mask tokens, and a
per-token flow-matching head (Li et al., arXiv 2406.11838; docs/mar.md).

Sequence layout: [class token] + the N = g×g tokens of the latent, in raster order. A token
whose value is known enters as its linear embedding, a masked one as the learned mask token
(its value is never read); both get a learned position embedding. Every position attends to
every other (no causal mask), the class enters as the class token and through adaLN, and
the output at each grid position, plus a learned per-position embedding for the head (MAR's
``diffusion_pos_embed``), is the condition z of that token's head. The head is the shared
per-token adaLN MLP (:class:`ecar.models.heads.TokenHead`, ``kind="mlp"``), the one E-CAR
uses.

MAR's network is an MAE-style encoder (visible tokens only) + decoder (all positions);
this module is one transformer over all positions — the choice and its reason are in
docs/mar.md. A pure ``nn.Module``: masking, loss, guidance and the unmasking loop live in
:mod:`ecar.flow.masking`, :mod:`ecar.engine.masked` and :mod:`ecar.methods.mar`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ecar.errors import ConfigError, shown
from ecar.layers import AdaLNBlock, LabelEmbedder, grid_positions
from ecar.models.base import init_input_layers
from ecar.models.heads import TokenGridNetwork, TokenHead, TokenHeadConfig

__all__ = ["MAR", "MARConfig"]


@dataclass
class MARConfig(TokenHeadConfig):
    """MAR architecture (transformer and head fields from TokenHeadConfig) and its masking."""

    name: str = "mar-tiny"
    masking: str = "truncated_normal"
    """Training only: the distribution of the masking ratio: ``truncated_normal`` (MAR:
    N(1, 0.25²) truncated to [mask_ratio_min, 1]) or ``cosine`` (MaskGIT: cos(π/2·u), u
    uniform — the ratios the cosine sampling schedule visits)."""
    mask_ratio_min: float = 0.7
    """Training only: lower end of the truncated normal."""

    def validate(self) -> None:
        super().validate()
        if self.masking not in ("truncated_normal", "cosine"):
            raise ConfigError(f"model.masking={shown(self.masking)}; choose truncated_normal or cosine")
        if not 0.0 < self.mask_ratio_min <= 1.0:
            raise ConfigError(f"model.mask_ratio_min must be in (0, 1], got {self.mask_ratio_min}")


class MAR(TokenGridNetwork):
    """Bidirectional masked transformer + per-token head over C×size×size latents.

    Tokens are (B, N, D) with N = (size / patch)², D = C·patch².
    """

    def __init__(self, cfg: MARConfig, channels: int, size: int, num_classes: int):
        super().__init__()
        self._set_grid(cfg, channels, size, num_classes)
        h = cfg.hidden

        self.embed = nn.Linear(self.token_dim, h)
        self.mask_token = nn.Parameter(torch.zeros(h))
        # learned, started at the 2-D sin-cos grid so that small budgets need not learn the geometry
        self.pos = nn.Parameter(grid_positions(self.grid, h)[None].clone())
        self.y_embed = LabelEmbedder(num_classes, h)
        self.blocks = nn.ModuleList(AdaLNBlock(h, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(h, eps=1e-6)
        self.head_pos = nn.Parameter(torch.zeros(1, self.num_tokens, h))
        self.head = TokenHead(self.token_dim, h, cfg.head_width, cfg.head_depth, kind="mlp")
        init_input_layers(self.embed)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.head_pos, std=0.02)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), mask (B, N) bool (True = masked: the value is not read),
        y (B,) labels (null = num_classes) -> z (B, N, hidden), the head condition per token."""
        h = self.embed(tokens)
        h = torch.where(mask[..., None], self.mask_token.to(h.dtype), h) + self.pos
        c = self.y_embed(y)
        h = torch.cat([c[:, None], h], dim=1)
        for blk in self.blocks:
            h = blk(h, c)
        return self.norm(h[:, 1:]) + self.head_pos
