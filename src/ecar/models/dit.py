"""DiT-style flow-matching transformer (Peebles & Xie, arXiv 2212.09748), velocity parameterised.

The whole token grid is one unit: the network maps (x_t, t, y) to the velocity of the
linear path. A pure ``nn.Module``: no loss, guidance or device choice in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ecar.layers import AdaLNBlock, FinalLayer, LabelEmbedder, TimestepEmbedder, grid_positions
from ecar.layers import patchify, unpatchify
from ecar.models.base import ClassConditional, TransformerConfig, init_input_layers


@dataclass
class DiTConfig(TransformerConfig):
    """DiT architecture."""

    name: str = "dit-tiny"


class DiT(ClassConditional):
    """Velocity network over a C×H×W latent.

    forward(x (B, C, H, W), t (B,) in [0, 1], y (B,) long, null = num_classes) -> (B, C, H, W).
    """

    def __init__(self, cfg: DiTConfig, channels: int, size: int, num_classes: int):
        super().__init__()
        if size % cfg.patch:
            raise ValueError(f"latent size {size} is not divisible by model.patch={cfg.patch}")
        self.cfg, self.channels, self.size, self.num_classes = cfg, channels, size, num_classes
        self.grid = size // cfg.patch
        token_dim = channels * cfg.patch**2
        self.embed = nn.Linear(token_dim, cfg.hidden)
        self.register_buffer("pos", grid_positions(self.grid, cfg.hidden)[None], persistent=False)
        self.t_embed = TimestepEmbedder(cfg.hidden)
        self.y_embed = LabelEmbedder(num_classes, cfg.hidden)
        self.blocks = nn.ModuleList(
            AdaLNBlock(cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth)
        )
        self.final = FinalLayer(cfg.hidden, token_dim)
        init_input_layers(self.embed, self.y_embed)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.cfg.patch
        h = self.embed(patchify(x, p)) + self.pos
        c = self.t_embed(t) + self.y_embed(y)
        for block in self.blocks:
            h = block(h, c)
        return unpatchify(self.final(h, c), p, self.channels, x.shape[2], x.shape[3])
