"""Latent <-> token grid. A C×h×w latent with patch p becomes (h/p)·(w/p) tokens of dim C·p²."""

from __future__ import annotations

import torch


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)·(W/p), C·p²), row-major over patches."""
    b, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"latent {h}×{w} is not divisible by patch size {p}")
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, C·p²) -> (B, C, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, channels, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, h, w)
