"""Tensors -> pictures: uint8 conversion, grids, PNG writing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) or (C, H, W) float in [-1, 1] -> (B, H, W, C) / (H, W, C) uint8 (clamped)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).contiguous().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """(B, H, W, C) uint8 -> one (rows·H, nrow·W, C) uint8 image with ``pad`` px borders.

    ``scale`` enlarges each pixel (nearest) so tiny images stay readable.
    """
    b, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(b))
    rows = math.ceil(b / nrow)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write (H, W, C) uint8 as PNG (C = 1 is saved as greyscale)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = array[..., 0] if array.shape[-1] == 1 else array
    Image.fromarray(img).save(path)
    return path


def auto_scale(size: int, target: int = 64) -> int:
    """Integer upscale factor so a ``size`` px image is shown at about ``target`` px."""
    return max(1, target // max(size, 1))


def save_grid(images: np.ndarray, path: str | Path, nrow: int | None = None) -> Path:
    return save_png(make_grid(images, nrow=nrow, scale=auto_scale(images.shape[1])), path)


def save_images(images: np.ndarray, directory: str | Path, prefix: str = "") -> list[Path]:
    """One PNG per image: DIR/{prefix}000000.png, ..."""
    directory = Path(directory)
    return [save_png(img, directory / f"{prefix}{i:06d}.png") for i, img in enumerate(images)]
