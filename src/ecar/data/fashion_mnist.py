"""``fashion-mnist``: Zalando's Fashion-MNIST (Xiao et al. 2017), read from the original files.

70,000 grey 28×28 photos of clothing in 10 classes (:data:`CLASS_NAMES`). Nothing is
downloaded: the four original IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``,
gzip-compressed ``.gz`` or not) are looked up in this order:

1. the directory in the dataset name, ``fashion-mnist:/some/dir`` (like ``imagefolder:PATH``);
2. the directory in the environment variable ``ECAR_FASHION_MNIST``;
3. ``/usr/share/datasets/fashion-mnist``, where the Debian/Ubuntu package
   ``dataset-fashion-mnist`` installs them.

Only the first place that applies is used (an explicit directory that lacks the files is an
error, never a silent fall-back). A missing dataset raises one :class:`DataError` that says
how to get it (:data:`INSTALL_HINT`); a file with a wrong IDX magic number, wrong header
or truncated content raises a :class:`DataError` naming the file.

Splits: ``train`` = the 60,000 official training images, ``heldout`` = the 10,000 official
test images (never trained on, so FID against them does not reward memorisation).

Preprocessing: pixels ``0..255 → [-1, 1]`` as ``x / 127.5 − 1`` (0, the background, is
black, −1). The default resolution is **32**: the 28×28 image is padded with 2 pixels of
background (−1) on every side. 32 = 2⁵ lets multi-scale models use the power-of-two
pyramid 1, 2, 4, 8, 16, 32 (and patch sizes 2, 4, 8) with exact area downsampling, and the
padding changes no pixel (a resize to 32 would blur every stroke by resampling; Fashion-MNIST
objects are centred with a dark margin, so the extra border is just more of that margin).
``resolution=28`` gives the native images; any other resolution resizes the 28×28 image
with bilinear interpolation (``align_corners=False``, anti-aliased when shrinking).
``channels=3`` repeats the grey plane.

The files are decoded once per process (about a second for all 70,000 images) and kept in a
module-level cache as uint8; ``__getitem__`` only converts one image to float (and resizes
it for resolutions other than 28 and 32). The fingerprint includes a SHA-256 of the
decoded pixel and label bytes, so it changes whenever the file content does.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import DataError, ImageDataset, check_channels, check_resolution, to_uint8

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_DIR",
    "ENV_VAR",
    "FashionMNISTDataset",
    "INSTALL_HINT",
    "NATIVE_SIZE",
    "find_fashion_mnist",
    "read_idx",
]

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
NATIVE_SIZE = 28
DEFAULT_RESOLUTION = 32
PAD = (DEFAULT_RESOLUTION - NATIVE_SIZE) // 2
ENV_VAR = "ECAR_FASHION_MNIST"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {  # split -> (images stem, labels stem)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "heldout": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MAGIC_IMAGES = 0x00000803  # unsigned byte, 3 dimensions
_MAGIC_LABELS = 0x00000801  # unsigned byte, 1 dimension
_VERSION = 1  # bump when preprocessing changes, so cached reference statistics are invalidated

INSTALL_HINT = (
    "Get it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs the "
    f"files into {DEFAULT_DIR}), or download the four files train-images-idx3-ubyte.gz, "
    "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
    "from https://github.com/zalandoresearch/fashion-mnist into a directory DIR and set "
    f"{ENV_VAR}=DIR or data.name=fashion-mnist:DIR."
)

# (resolved path, size, mtime_ns) of both files -> (images N×28×28 uint8, labels N int64, sha256)
_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, str]] = {}


def _file_for(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz`` (the uncompressed file wins), else None."""
    for name in (stem, stem + ".gz"):
        p = directory / name
        if p.is_file():
            return p
    return None


def find_fashion_mnist(directory: str | Path | None = None) -> Path:
    """The directory that holds the four Fashion-MNIST files (lookup order in the module doc).

    Raises:
        DataError: the chosen place lacks one of the files; the message lists what is
            missing and :data:`INSTALL_HINT`.
    """
    if directory is not None and str(directory).strip():
        where, d = "data.name=fashion-mnist:DIR", Path(str(directory).strip()).expanduser()
    elif os.environ.get(ENV_VAR, "").strip():
        where, d = f"${ENV_VAR}", Path(os.environ[ENV_VAR].strip()).expanduser()
    else:
        where, d = "the default location", DEFAULT_DIR
    stems = [s for pair in _FILES.values() for s in pair]
    missing = [s + "[.gz]" for s in stems if not d.is_dir() or _file_for(d, s) is None]
    if missing:
        state = "does not exist" if not d.is_dir() else f"lacks {', '.join(missing)}"
        raise DataError(
            f"fashion-mnist: dataset not found: {d} ({where}) {state}. {INSTALL_HINT}"
        )
    return d


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(
            f"fashion-mnist: cannot read {path} ({type(e).__name__}: {e}); the file is "
            f"corrupt or truncated, replace it. {INSTALL_HINT}"
        ) from e


def read_idx(path: str | Path, magic: int) -> np.ndarray:
    """Decode one IDX file of unsigned bytes (gzip or raw) into a uint8 array.

    The header is a big-endian int32 magic number (``0x00000803`` for 3-d images,
    ``0x00000801`` for 1-d labels: type code 0x08 = unsigned byte, then the number of
    dimensions) followed by one big-endian int32 per dimension.

    Raises:
        DataError: wrong magic number, header shorter than announced, or a data size that
            differs from the product of the dimensions (truncated or padded file).
    """
    path = Path(path)
    raw = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"fashion-mnist: {path} is truncated ({len(raw)} bytes, no IDX header).")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataError(
            f"fashion-mnist: {path} is not an IDX file of this kind (magic number 0x{got:08x}, "
            f"expected 0x{magic:08x}); is it the right file?"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"fashion-mnist: {path} holds {len(raw) - header} data bytes but its header "
            f"announces {'×'.join(map(str, dims))} = {expected}; the file is truncated or "
            "corrupt, replace it."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Images ``N×28×28`` uint8, labels ``N`` int64 and a content SHA-256 of one split (cached)."""
    img_path = _file_for(directory, _FILES[split][0])
    lab_path = _file_for(directory, _FILES[split][1])
    if img_path is None or lab_path is None:  # removed since find_fashion_mnist looked
        find_fashion_mnist(directory)
    assert img_path is not None and lab_path is not None, f"{directory}: the Fashion-MNIST files changed while read"
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in (img_path, lab_path))
    if key not in _CACHE:
        images = read_idx(img_path, _MAGIC_IMAGES)
        labels = read_idx(lab_path, _MAGIC_LABELS)
        if images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE):
            raise DataError(
                f"fashion-mnist: {img_path} holds {images.shape[1]}×{images.shape[2]} images, "
                f"expected {NATIVE_SIZE}×{NATIVE_SIZE}; is it the right file?"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"fashion-mnist: {img_path} has {images.shape[0]} images but {lab_path} has "
                f"{labels.shape[0]} labels; the two files do not belong together."
            )
        if labels.size and int(labels.max()) >= len(CLASS_NAMES):
            raise DataError(
                f"fashion-mnist: {lab_path} has label {int(labels.max())}, expected 0..9; "
                "the file is corrupt, replace it."
            )
        h = hashlib.sha256()
        h.update(images.tobytes())
        h.update(labels.tobytes())
        # copies: np.frombuffer arrays are read-only, and torch wants writable memory
        _CACHE[key] = (images.copy(), labels.astype(np.int64), h.hexdigest())
    return _CACHE[key]


class FashionMNISTDataset(ImageDataset):
    """Fashion-MNIST as ``C×R×R`` float32 tensors in [-1, 1] with labels 0..9.

    Args:
        split: ``"train"`` (60,000 images) or ``"heldout"`` (the 10,000 test images).
        resolution: image side (default 32 = 28 padded by 2 px of black; 28 is native;
            other sizes are bilinear resizes of the 28×28 image).
        channels: 1 (default) or 3 (grey repeated).
        directory: folder of the IDX files (default: ``$ECAR_FASHION_MNIST``, then
            ``/usr/share/datasets/fashion-mnist``).

    Raises:
        DataError: unknown split, bad resolution/channels, missing or corrupt files.
    """

    directory: Path | None
    """The folder of the IDX files read (None for data shipped in the package)."""

    def __init__(
        self,
        split: str = "train",
        resolution: int | None = None,
        channels: int | None = None,
        directory: str | Path | None = None,
    ) -> None:
        if split not in _FILES:
            raise DataError(f"fashion-mnist: unknown split {split!r}; use 'train' or 'heldout'.")
        self.directory = find_fashion_mnist(directory)
        self._setup("fashion-mnist", split, resolution, channels, *_load_split(self.directory, split))

    def _setup(self, name: str, split: str, resolution: int | None, channels: int | None,
               images: np.ndarray, labels: np.ndarray, digest: str) -> None:
        """The dataset over ``images`` (N×28×28 uint8) and ``labels`` (N int64) of one split."""
        self.name = name
        self.split = split
        self.resolution = check_resolution(resolution, DEFAULT_RESOLUTION, name)
        self.channels = check_channels(channels, 1, name)
        self.num_classes = len(CLASS_NAMES)
        self.class_names = list(CLASS_NAMES)
        self._u8 = torch.from_numpy(images)  # N×28×28 uint8, shared read-only with the cache
        self._y = torch.from_numpy(labels)
        self._digest = digest

    def __len__(self) -> int:
        return int(self._y.shape[0])

    def _float(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``N×28×28`` → float32 ``N×1×R×R`` in [-1, 1] at this dataset's resolution."""
        x = u8.unsqueeze(1).float().div_(127.5).sub_(1.0)
        r = self.resolution
        if r == DEFAULT_RESOLUTION:
            x = F.pad(x, (PAD,) * 4, value=-1.0)
        elif r != NATIVE_SIZE:
            x = F.interpolate(
                x, size=(r, r), mode="bilinear", align_corners=False, antialias=r < NATIVE_SIZE
            ).clamp_(-1.0, 1.0)
        return x

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self._float(self._u8[i].unsqueeze(0))[0]
        if self.channels == 3:
            x = x.expand(3, -1, -1).contiguous()
        return x, int(self._y[i])

    @property
    def labels(self) -> torch.Tensor:
        """int64 labels of the split, in item order."""
        return self._y.clone()

    def images(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Items ``start..stop`` as one float32 tensor ``N×C×R×R`` (batched, no per-item loop)."""
        x = self._float(self._u8[start:stop])
        return x.expand(-1, 3, -1, -1).contiguous() if self.channels == 3 else x

    def images_uint8(self, n: int | None = None) -> np.ndarray:
        n = len(self) if n is None else max(0, min(int(n), len(self)))
        return to_uint8(self.images(0, n))

    def _fingerprint_fields(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": _VERSION,
            "split": self.split,
            "resolution": self.resolution,
            "channels": self.channels,
            "size": len(self),
            "content_sha256": self._digest,
        }
