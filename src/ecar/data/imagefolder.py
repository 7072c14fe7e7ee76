"""``imagefolder:PATH``: a user's own images, one subfolder per class.

Layout: ``PATH/<class>/**/<image>`` with class names = sorted subfolder names (label =
position in that order). Hidden files and folders (leading ``.``) are ignored, and
subfolders of a class folder are searched too. If ``PATH`` has no subfolders but holds
images directly, they form a single class named ``"all"`` (when class subfolders exist,
images lying directly in ``PATH`` are ignored). A class folder without images keeps its
label (logged). Extensions (any case): :data:`IMAGE_EXTENSIONS`.

Preprocessing (same as ADM / DiT's ``center_crop_arr``): EXIF orientation applied;
transparency (RGBA, LA, palette with transparency) composited on white; everything
(grey, 16-bit grey, CMYK, palette, ...) converted to RGB (``channels=3``, default) or L
(``channels=1``); the shorter side is brought to ``resolution`` by repeated 2× box
reduction then bicubic resampling; the centre ``resolution×resolution`` square is kept.

Every file is decoded once at construction and the uint8 results are kept in memory
(``N×R×R×C``; e.g. 10k RGB images at 256² take 2 GB). Files that cannot be decoded are
skipped with a single warning (``warnings`` + ``logging``) giving the count and the first
few paths.

Splits: ``train`` = every readable image. ``heldout`` = within each class, every 10th
file of the sorted listing (positions 0, 10, 20, ...), i.e. a deterministic ~10% subset
that covers every class. Note ``heldout`` is a subset of ``train`` (not disjoint): user
folders are often small, so no images are withheld from training; ``heldout`` is meant
as a cheap fixed reference set (e.g. for quick metric estimates).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .base import (
    DataError,
    ImageDataset,
    check_channels,
    check_resolution,
    fingerprint_of,
)

__all__ = ["ImageFolderDataset", "IMAGE_EXTENSIONS", "HELDOUT_EVERY", "load_image"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
HELDOUT_EVERY = 10
_PROGRESS_MIN_FILES = 200
_VERSION = 1


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _file_id(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` points to (links followed), None if it is unreadable."""
    try:
        st = os.stat(path)
    except OSError:  # a dangling or looping link, a file removed meanwhile
        return None
    return st.st_dev, st.st_ino


def _list_images(folder: Path, recursive: bool, seen_dirs: set | None = None) -> list[Path]:
    """Sorted image files of ``folder`` (hidden entries skipped), each file once.

    Symbolic links are followed (a class folder may link to images elsewhere), but every
    folder and every file is identified by (device, inode): a folder already visited is not
    entered again and a file already listed is not listed again. So a link back to a parent
    (a loop) ends the walk instead of repeating it — with two such links a naive walk is
    exponential in the depth the OS allows — and an image reached by several paths counts
    once (the first path in breadth-first, sorted order: the shallowest). ``seen_dirs``
    holds folders not to enter (the dataset root, so a link to it is not a class's images).
    """
    seen_dirs = set() if seen_dirs is None else set(seen_dirs)
    seen_files: set[tuple[int, int]] = set()
    out: list[Path] = []
    start = _file_id(folder)
    if start is None:
        return out
    seen_dirs.add(start)
    queue = deque([folder])
    while queue:
        current = queue.popleft()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:
                continue
            if is_dir and recursive:
                key = _file_id(entry.path)
                if key is not None and key not in seen_dirs:
                    seen_dirs.add(key)
                    queue.append(Path(entry.path))
            elif is_file and _is_image(entry.name):
                key = _file_id(entry.path)
                if key is not None and key not in seen_files:
                    seen_files.add(key)
                    out.append(Path(entry.path))
    return sorted(out)


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to ``L`` (channels=1) or ``RGB`` (channels=3); alpha over white."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        scale = 255.0 / 65535.0 if (img.mode.startswith("I;16") or a.max() > 255) else 1.0
        img = Image.fromarray(np.clip(a * scale, 0, 255).round().astype(np.uint8), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        img.mode == "P" and "transparency" in img.info
    )
    if has_alpha:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert("L" if channels == 1 else "RGB")


def load_image(path: str | os.PathLike, resolution: int, channels: int) -> np.ndarray:
    """Decode, convert, resize (shorter side) and centre-crop one file to uint8 ``R×R×C``.

    Raises whatever PIL raises for unreadable files (``OSError``, ``ValueError``, ...).
    """
    with Image.open(path) as im:
        im.load()
        img = ImageOps.exif_transpose(im)
        img = _to_mode(img, channels)
    # ADM-style: halve with a box filter while still >= 2x too big, then one bicubic step.
    while min(img.size) >= 2 * resolution:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.Resampling.BOX)
    scale = resolution / min(img.size)
    w, h = (max(resolution, round(s * scale)) for s in img.size)
    img = img.resize((w, h), Image.Resampling.BICUBIC)
    left, top = (w - resolution) // 2, (h - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


class ImageFolderDataset(ImageDataset):
    """Images of a class-per-subfolder directory as ``C×R×R`` float32 tensors in [-1, 1].

    Args:
        root: the folder (``~`` expanded).
        resolution: required square side in pixels.
        split: ``"train"`` (all readable images) or ``"heldout"`` (every 10th per class).
        channels: 3 (RGB, default) or 1 (grey).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int | None,
        split: str = "train",
        channels: int | None = None,
    ) -> None:
        if split not in ("train", "heldout"):
            raise DataError(f"imagefolder: unknown split {split!r}; use 'train' or 'heldout'.")
        if resolution is None:
            raise DataError(
                "imagefolder: the image size is not fixed by the dataset; set data.resolution "
                "(e.g. data.resolution=64) - images are resized and centre-cropped to it."
            )
        resolution = check_resolution(resolution, 0, "imagefolder")
        self.name = "imagefolder"
        self.split = split
        self.resolution = resolution
        self.channels = check_channels(channels, 3, "imagefolder")
        self.root = Path(root).expanduser().resolve()
        layout = "PATH/<class_name>/<image>.png (one subfolder per class)"
        if not self.root.exists():
            raise DataError(f"imagefolder: folder {self.root} does not exist; expected {layout}.")
        if not self.root.is_dir():
            raise DataError(f"imagefolder: {self.root} is not a folder; expected {layout}.")

        classes = sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        root_id = {_file_id(self.root)} - {None}
        if classes:
            per_class = [_list_images(self.root / c, recursive=True, seen_dirs=root_id) for c in classes]
        else:
            classes, per_class = ["all"], [_list_images(self.root, recursive=False)]
        if not any(per_class):
            raise DataError(
                f"imagefolder: no image files ({', '.join(IMAGE_EXTENSIONS)}) found in "
                f"{self.root}; expected {layout}, or images directly inside PATH for one class."
            )
        empty = [c for c, paths in zip(classes, per_class) if not paths]
        if empty:
            logger.warning("imagefolder: class folders without images: %s", ", ".join(empty))
        self.class_names = classes
        self.num_classes = len(classes)

        files: list[tuple[Path, int]] = []
        for label, paths in enumerate(per_class):
            if split == "heldout":
                paths = paths[::HELDOUT_EVERY]
            files.extend((p, label) for p in paths)
        self._images, self._labels, self.files = self._decode(files)
        self._fingerprint: str | None = None

    def _decode(self, files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray, list[Path]]:
        r, c = self.resolution, self.channels
        images = np.empty((len(files), r, r, c), np.uint8)
        labels: list[int] = []
        kept: list[Path] = []
        skipped: list[tuple[Path, Exception]] = []
        bar = tqdm(
            files,
            desc=f"imagefolder: decoding {self.root.name}",
            unit="img",
            disable=len(files) <= _PROGRESS_MIN_FILES,
            leave=False,
        )
        for path, label in bar:
            try:
                images[len(kept)] = load_image(path, r, c)
            except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
                skipped.append((path, e))
                continue
            kept.append(path)
            labels.append(label)
        if not kept:
            first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
            raise DataError(
                f"imagefolder: none of the {len(files)} image files in {self.root} could be "
                f"read{first}; check that they are valid images."
            )
        if skipped:
            shown = ", ".join(str(p.relative_to(self.root)) for p, _ in skipped[:3])
            msg = (
                f"imagefolder: skipped {len(skipped)} of {len(files)} files that could not be read "
                f"(first: {shown}{', ...' if len(skipped) > 3 else ''}; {skipped[0][1]})"
            )
            logger.warning(msg)
            warnings.warn(msg, UserWarning, stacklevel=3)
        if len(kept) < len(files):
            images = images[: len(kept)].copy()
        return images, np.asarray(labels, np.int64), kept

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self._images[i]).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return x, int(self._labels[i])

    @property
    def labels(self) -> np.ndarray:
        """int64 labels in item order."""
        return self._labels.copy()

    def images_uint8(self, n: int | None = None) -> np.ndarray:
        return self._images[: len(self) if n is None else max(0, int(n))].copy()

    def _fingerprint_fields(self) -> dict[str, Any]:
        return {
            "name": "imagefolder",
            "version": _VERSION,
            "split": self.split,
            "resolution": self.resolution,
            "channels": self.channels,
            "classes": self.class_names,
            "size": len(self),
        }

    def fingerprint(self) -> str:
        """Hash of the decoded pixels and labels (plus settings): independent of path/mtime."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(
                self._fingerprint_fields(), self._labels.tobytes(), self._images.tobytes()
            )
        return self._fingerprint
