"""``fashion-mini``: 8,000 Fashion-MNIST images that ship inside the package (``ecar demo``'s data).

A fixed, class-balanced subset of Zalando's Fashion-MNIST (Xiao, Rasul and Vollgraf 2017;
MIT licence, ``ecar/assets/FASHION_MINI_LICENSE.txt``): the first 600 images of each class
of the official training file (6,000, split ``train``) and the first 200 of each class of the
official test file (2,000, split ``heldout``, never trained on). It arrives with
``pip install`` — no download, no system package — so the demo runs anywhere.
``scripts/make_fashion_mini.py`` made ``ecar/assets/fashion_mini.npz`` from the official files;
the file keeps each image's index in them and the SHA-256 of the official splits' content.

Everything else is as ``fashion-mnist`` (:mod:`ecar.data.fashion_mnist`): ten classes
(:data:`~ecar.data.fashion_mnist.CLASS_NAMES`), 28×28 grey padded to 32 by default, the same
preprocessing, and the same shipped classifier (``fashion``) for FID and class accuracy.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib

import numpy as np

from ecar import paths

from .base import DataError
from .fashion_mnist import CLASS_NAMES, NATIVE_SIZE, FashionMNISTDataset

__all__ = ["ASSET", "FashionMiniDataset"]

ASSET = "fashion_mini.npz"
"""The file in ``ecar/assets`` that holds both splits."""

_CACHE: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}


def _load(split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(images N×28×28 uint8, labels N int64, content SHA-256) of one split, read once."""
    if split not in _CACHE:
        path = paths.assets_dir() / ASSET
        try:
            with np.load(path, allow_pickle=False) as f:
                images, labels = f[f"{split}_images"], f[f"{split}_labels"].astype(np.int64)
        except FileNotFoundError:
            raise DataError(f"fashion-mini: {path} is missing; the installation is incomplete, "
                            "reinstall ecar (pip install --force-reinstall ecar)") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"fashion-mini: {path} is unreadable ({type(e).__name__}: {e}); the installation "
                            "is corrupt, reinstall ecar (pip install --force-reinstall ecar)") from None
        if (images.dtype != np.uint8 or images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE)
                or len(images) != len(labels) or not len(labels) or int(labels.max()) >= len(CLASS_NAMES)):
            raise DataError(f"fashion-mini: {path} does not hold {split} images of 28×28 with labels 0..9; "
                            "reinstall ecar (pip install --force-reinstall ecar)")
        h = hashlib.sha256()
        h.update(images.tobytes())
        h.update(labels.tobytes())
        _CACHE[split] = (np.ascontiguousarray(images), labels, h.hexdigest())
    return _CACHE[split]


class FashionMiniDataset(FashionMNISTDataset):
    """``fashion-mini`` as ``C×R×R`` float32 tensors in [-1, 1] with labels 0..9.

    Args:
        split: ``"train"`` (6,000 images) or ``"heldout"`` (2,000).
        resolution, channels: as :class:`~ecar.data.fashion_mnist.FashionMNISTDataset`.
    """

    def __init__(self, split: str = "train", resolution: int | None = None, channels: int | None = None) -> None:
        if split not in ("train", "heldout"):
            raise DataError(f"fashion-mini: unknown split {split!r}; use 'train' or 'heldout'.")
        self.directory = None
        self._setup("fashion-mini", split, resolution, channels, *_load(split))
