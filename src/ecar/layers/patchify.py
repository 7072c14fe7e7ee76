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


def upsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour upsampling (B, C, n, n) -> (B, C, size, size) by an integer factor
    (what E-CAR's jump derivation assumes, ``ecar.flow.pyramid``)."""
    if x.shape[-1] == size:
        return x
    if size % x.shape[-1]:
        raise ValueError(f"cannot upsample {x.shape[-1]} to {size}: not an integer factor")
    k = size // x.shape[-1]
    return x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
