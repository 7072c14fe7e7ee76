"""Common protocol of every ``ecar`` image dataset and the error type of the data package.

A dataset yields ``(image, label)`` pairs where ``image`` is a float32 tensor of shape
``C×R×R`` with values in ``[-1, 1]`` (``C`` = :attr:`ImageDataset.channels` ∈ {1, 3},
``R`` = :attr:`ImageDataset.resolution`) and ``label`` an ``int`` in
``[0, num_classes)``. :meth:`ImageDataset.fingerprint` names the exact content so that
reference statistics (FID features etc.) can be cached on disk and reused safely.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ecar.imageio import to_uint8

__all__ = [
    "DataError",
    "HFlipped",
    "ImageDataset",
    "check_channels",
    "check_resolution",
    "fingerprint_of",
    "to_uint8",
]


class DataError(ValueError):
    """A dataset that cannot be built as asked; the message says what to change."""


def fingerprint_of(fields: dict[str, Any], *blobs: bytes) -> str:
    """Short (16 hex digits) SHA-256 of a JSON-able dict plus optional raw byte blobs."""
    h = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for b in blobs:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def check_channels(channels: int | None, default: int, name: str) -> int:
    """Return ``channels`` (or ``default`` when ``None``) after checking it is 1 or 3."""
    c = default if channels is None else channels
    if c not in (1, 3):
        raise DataError(
            f"{name}: channels must be 1 (grey) or 3 (RGB), got {channels!r}; "
            "set data.channels=1 or data.channels=3 (or leave it unset)."
        )
    return c


def check_resolution(resolution: int | None, default: int, name: str, minimum: int = 1) -> int:
    """Return ``resolution`` (``default`` when ``None``) after checking it is an int ≥ minimum."""
    r = default if resolution is None else resolution
    if isinstance(r, bool) or not isinstance(r, int) or r < minimum:
        raise DataError(
            f"{name}: resolution must be an integer >= {minimum}, got {resolution!r}; "
            "set data.resolution to the image side in pixels."
        )
    return r


class ImageDataset(Dataset):
    """Base class: a finite, indexable set of labelled square images.

    Subclasses set :attr:`name`, :attr:`split`, :attr:`num_classes`, :attr:`channels`,
    :attr:`resolution`, :attr:`class_names` and implement ``__len__``, ``__getitem__`` and
    :meth:`_fingerprint_fields` (or override :meth:`fingerprint`).
    """

    name: str
    split: str
    num_classes: int
    channels: int
    resolution: int
    class_names: list[str]

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fingerprint_fields(self) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Stable 16-hex-digit id of the exact content (same string ⇔ same images and labels)."""
        return fingerprint_of(self._fingerprint_fields())

    def images_uint8(self, n: int | None = None) -> np.ndarray:
        """The first ``n`` images (all when ``None``) as a uint8 array ``N×R×R×C``."""
        n = len(self) if n is None else max(0, min(int(n), len(self)))
        if n == 0:
            return np.zeros((0, self.resolution, self.resolution, self.channels), np.uint8)
        return to_uint8(torch.stack([self[i][0] for i in range(n)]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, len={len(self)}, "
            f"classes={self.num_classes}, channels={self.channels}, resolution={self.resolution})"
        )


class HFlipped(ImageDataset):
    """``base`` followed by the horizontal mirror image of each of its images (2·N items).

    Item ``i < N`` is ``base[i]``; item ``N + i`` is ``base[i]`` flipped left-right, same
    label. A fixed doubling rather than a random flip keeps the data order (and so a resumed
    run, and a latent cache made by ``ecar cache-latents``) deterministic: ``data.hflip``.
    """

    def __init__(self, base: ImageDataset):
        self.base = base
        for attr in ("name", "split", "num_classes", "channels", "resolution", "class_names"):
            setattr(self, attr, getattr(base, attr))

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.base)
        if not 0 <= i < 2 * n:
            raise IndexError(i)
        x, y = self.base[i % n]
        return (x.flip(-1) if i >= n else x), y

    def _fingerprint_fields(self) -> dict[str, Any]:
        return {"hflip": True, "base": self.base.fingerprint()}
