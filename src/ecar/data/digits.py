"""``digits``: scikit-learn's bundled 8×8 handwritten digits, the smallest real dataset.

1,797 grey images with values 0..16 in 10 classes (``"0"`` .. ``"9"``), shipped inside
scikit-learn (no download). Pixels are mapped linearly ``0..16 → [-1, 1]`` and resized
from 8×8 to ``resolution`` (default 16) with bilinear interpolation
(``align_corners=False``, anti-aliased when downsampling). ``channels=3`` repeats the grey
plane.

Split (independent of ``seed``): a permutation from a fixed generator (seed 0) is drawn
per class and its first :data:`HELDOUT_PER_CLASS` = 30 images form ``heldout``
(300 images, every class present); ``train`` is the other 1,497. The two are disjoint.
The full tensor is computed once per resolution and cached in the module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, ImageDataset, check_channels, check_resolution, to_uint8

__all__ = ["DigitsDataset", "HELDOUT_PER_CLASS", "NATIVE_SIZE"]

NATIVE_SIZE = 8
DEFAULT_RESOLUTION = 16
HELDOUT_PER_CLASS = 30
_SPLIT_SEED = 0
_VERSION = 1  # bump when preprocessing changes, so cached reference statistics are invalidated

_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
_SPLITS: dict[str, np.ndarray] = {}


def _load(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as float32 ``N×1×R×R`` in [-1, 1] and int64 labels ``N`` (cached)."""
    if resolution not in _CACHE:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0
        if resolution != NATIVE_SIZE:
            x = F.interpolate(
                x,
                size=(resolution, resolution),
                mode="bilinear",
                align_corners=False,
                antialias=resolution < NATIVE_SIZE,
            )
        x = x.clamp_(-1.0, 1.0).contiguous()
        _CACHE[resolution] = (x, torch.from_numpy(d.target.astype(np.int64)))
    return _CACHE[resolution]


def _split_indices(split: str, labels: np.ndarray) -> np.ndarray:
    """Sorted indices of ``split``: stratified, fixed (seed 0), independent of the dataset seed."""
    if not _SPLITS:
        rng = np.random.default_rng(_SPLIT_SEED)
        held = []
        for c in range(10):
            idx = np.flatnonzero(labels == c)
            held.append(rng.permutation(idx)[:HELDOUT_PER_CLASS])
        held_idx = np.sort(np.concatenate(held))
        mask = np.ones(len(labels), bool)
        mask[held_idx] = False
        _SPLITS["heldout"] = held_idx
        _SPLITS["train"] = np.flatnonzero(mask)
    return _SPLITS[split]


class DigitsDataset(ImageDataset):
    """scikit-learn digits as ``C×R×R`` float32 tensors in [-1, 1] with labels 0..9.

    Args:
        split: ``"train"`` (1,497 images) or ``"heldout"`` (300 images, 30 per class).
        resolution: image side (default 16; native size is 8).
        channels: 1 (default) or 3 (grey repeated).
    """

    def __init__(
        self, split: str = "train", resolution: int | None = None, channels: int | None = None
    ) -> None:
        if split not in ("train", "heldout"):
            raise DataError(f"digits: unknown split {split!r}; use 'train' or 'heldout'.")
        self.name = "digits"
        self.split = split
        self.resolution = check_resolution(resolution, DEFAULT_RESOLUTION, "digits")
        self.channels = check_channels(channels, 1, "digits")
        self.num_classes = 10
        self.class_names = [str(i) for i in range(10)]
        x, y = _load(self.resolution)
        idx = torch.from_numpy(_split_indices(split, y.numpy()))
        self.indices = idx.numpy().copy()
        """Positions of this split's images in ``sklearn.datasets.load_digits()``."""
        self._x = x[idx]  # N×1×R×R (a copy: the module cache is never handed out)
        self._y = y[idx]

    def __len__(self) -> int:
        return int(self._y.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._x[i]
        x = x.repeat(3, 1, 1) if self.channels == 3 else x.clone()
        return x, int(self._y[i])

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels of the split, in item order."""
        return self._y.clone()

    def images_uint8(self, n: int | None = None) -> np.ndarray:
        n = len(self) if n is None else max(0, min(int(n), len(self)))
        x = self._x[:n]
        return to_uint8(x.repeat(1, 3, 1, 1) if self.channels == 3 else x)

    def _fingerprint_fields(self) -> dict[str, Any]:
        # The content does not depend on the dataset seed, so the seed is left out on purpose.
        return {
            "name": "digits",
            "version": _VERSION,
            "split": self.split,
            "resolution": self.resolution,
            "channels": self.channels,
            "size": len(self),
        }
