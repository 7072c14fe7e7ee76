"""Datasets of ``ecar``: ``digits``, ``shapes``, ``fashion-mini``, ``fashion-mnist`` and ``imagefolder:PATH``.

Every dataset is an :class:`ImageDataset` whose items are ``(image, label)`` with
``image`` a float32 ``C×R×R`` tensor in ``[-1, 1]``. Build one by name with
:func:`build_dataset` (the ``data`` section of the config maps onto its arguments).

=================== ======= ===== ==== ===================================================
name                classes C     R    content
=================== ======= ===== ==== ===================================================
``digits``          10      1     16   scikit-learn 8×8 digits, bilinear-resized; 1,497 / 300
``shapes``          8       3     32   procedural seeded shapes; ``shapes_size`` / ≤ 5,000
``fashion-mini``    10      1     32   Fashion-MNIST subset shipped in the package; 6,000 / 2,000
``fashion-mnist``   10      1     32   Fashion-MNIST 28×28 padded to 32; 60,000 / 10,000 test
``imagefolder:P``   folders 3     —    user images, ``resolution`` required; all / every 10th
``latents:DIR``     source  src.  src. latents of a source set, from ``ecar cache-latents``
=================== ======= ===== ==== ===================================================

``fashion-mnist`` reads the original files (``fashion-mnist:DIR``, ``$ECAR_FASHION_MNIST``
or the Debian package ``dataset-fashion-mnist``); see :mod:`ecar.data.fashion_mnist`.
``fashion-mini`` (``ecar demo``'s data) ships inside the package: :mod:`ecar.data.fashion_mini`.
"""

from __future__ import annotations

from .base import DataError, HFlipped, ImageDataset
from .digits import DigitsDataset
from .fashion_mini import FashionMiniDataset
from .fashion_mnist import FashionMNISTDataset
from .imagefolder import ImageFolderDataset
from .latents import LatentCacheDataset, source_data_args
from .shapes import ShapesDataset

__all__ = [
    "DATASET_NAMES",
    "SPLITS",
    "DataError",
    "DigitsDataset",
    "FashionMiniDataset",
    "FashionMNISTDataset",
    "HFlipped",
    "ImageDataset",
    "LatentCacheDataset",
    "ImageFolderDataset",
    "ShapesDataset",
    "build_dataset",
    "source_data_args",
]

DATASET_NAMES = ("digits", "shapes", "fashion-mini", "fashion-mnist[:DIR]", "imagefolder:PATH", "latents:DIR")
SPLITS = ("train", "heldout")


def build_dataset(
    name: str,
    *,
    split: str = "train",
    resolution: int | None = None,
    channels: int | None = None,
    seed: int = 0,
    shapes_size: int = 50_000,
) -> ImageDataset:
    """Build a dataset by name.

    Args:
        name: ``"digits"``, ``"shapes"``, ``"fashion-mini"``, ``"fashion-mnist"`` (optionally
            ``"fashion-mnist:DIR"``, the folder of its IDX files), ``"imagefolder:PATH"`` or
            ``"latents:DIR"`` (a latent cache; training split only, items are latents).
        split: ``"train"`` or ``"heldout"``.
        resolution: image side; ``None`` keeps the native size (digits 16, shapes 32,
            fashion-mnist 32 = 28 padded); required for ``imagefolder``.
        channels: 1 or 3; ``None`` keeps the dataset's own (digits and fashion-mnist 1,
            others 3).
        seed: dataset seed (only ``shapes`` depends on it).
        shapes_size: number of ``shapes`` training images.

    Raises:
        DataError: unknown name or split, missing folder or dataset files, no readable
            image, bad value.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"data.name must be one of {', '.join(DATASET_NAMES)}; got {name!r}.")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    name = name.strip()
    kind, sep, path = name.partition(":")
    kind = kind.lower()
    if kind == "digits" and not sep:
        return DigitsDataset(split=split, resolution=resolution, channels=channels)
    if kind == "shapes" and not sep:
        return ShapesDataset(
            split=split, resolution=resolution, channels=channels, seed=seed, size=shapes_size
        )
    if kind == "fashion-mini" and not sep:
        return FashionMiniDataset(split=split, resolution=resolution, channels=channels)
    if kind == "fashion-mnist":
        return FashionMNISTDataset(
            split=split, resolution=resolution, channels=channels, directory=path.strip() or None
        )
    if kind == "imagefolder":
        if not path.strip():
            raise DataError(
                "imagefolder needs a folder: set data.name=imagefolder:/path/to/images "
                "(one subfolder per class)."
            )
        return ImageFolderDataset(path.strip(), resolution, split=split, channels=channels)
    if kind == "latents":
        if not path.strip():
            raise DataError("latents needs a cache directory: data.name=latents:DIR (made by ecar cache-latents).")
        return LatentCacheDataset(path.strip(), split=split)
    raise DataError(
        f"unknown dataset {name!r}; use one of {', '.join(DATASET_NAMES)} "
        "(e.g. data.name=imagefolder:/path/to/images for your own images)."
    )
