"""Embeddings: sinusoidal time features, class labels with a null class, 2-D sin-cos positions."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn


def sinusoidal_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sin/cos features of a scalar per row. ``t``: (B,) -> (B, dim).

    ``t`` in [0, 1] is multiplied by 1000 so the frequencies match the DiT convention.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Scalar time t in [0, 1] -> (B, hidden) through sinusoidal features and an MLP."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_features(t, self.freq_dim).to(cast(nn.Linear, self.mlp[0]).weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> (B, hidden). Index ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, hidden)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.table(y)


def sincos_2d(coords_y: torch.Tensor, coords_x: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sin-cos embedding of continuous coordinates. (N,), (N,) -> (N, dim).

    Half the channels encode y, half x. Coordinates are continuous so that grids of
    different resolution share one coordinate frame (used by E-CAR's stage pyramid).
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter))

    def one(c: torch.Tensor) -> torch.Tensor:
        a = c.double()[:, None] * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=-1)

    return torch.cat([one(coords_y), one(coords_x)], dim=-1).float()


def grid_positions(grid: int, dim: int, frame: int | None = None) -> torch.Tensor:
    """Sin-cos positions of a ``grid``×``grid`` token map, row-major -> (grid², dim).

    With ``frame`` set, cell centres are expressed in units of a ``frame``×``frame`` grid
    (e.g. the finest stage), so a coarse token sits at the centre of the fine tokens it covers.
    """
    frame = frame or grid
    centres = (torch.arange(grid, dtype=torch.float64) + 0.5) * (frame / grid)
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    return sincos_2d(yy.reshape(-1), xx.reshape(-1), dim)
