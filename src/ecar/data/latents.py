"""``latents:DIR``: training latents encoded once by ``ecar cache-latents``.

A cache directory holds a ``manifest.json`` and shards of memory-mapped NumPy arrays::

    manifest.json                 what was encoded, with what, and which shards are done
    shard-00000.latents.npy       N×C×h×w float32 (or float16) latents, already scaled
    shard-00000.labels.npy        N int64 labels
    ...

The manifest records the source dataset (the ``data`` arguments it was built with and its
content fingerprint), the autoencoder (name, ``autoencoder.scale`` and a SHA-256 of its
weights), the latent shape, dtype and shard size, and one entry per finished shard (count
and SHA-256 of both files). ``complete`` turns true when the last shard is written; an
incomplete cache is refused here and finished by running the same command again.

Items are ``(latent, label)`` with ``latent`` float32 ``C×h×w`` in the model's latent
space: the trainer does not encode them again. :attr:`LatentCacheDataset.channels` and
:attr:`~LatentCacheDataset.resolution` are the *images'* (they size the autoencoder and are
recorded in checkpoints). Only the training split is cached; reference images for FID come
from the source dataset (:func:`source_data_args`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .base import DataError, ImageDataset

__all__ = ["FORMAT", "MANIFEST", "LatentCacheDataset", "read_manifest", "shard_files", "source_data_args"]

MANIFEST = "manifest.json"
FORMAT = 1
PREFIX = "latents:"


def shard_files(index: int) -> tuple[str, str]:
    """File names of shard ``index``: (latents, labels)."""
    return f"shard-{index:05d}.latents.npy", f"shard-{index:05d}.labels.npy"


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a cache directory; :class:`DataError` when it is missing or unreadable."""
    d = Path(directory).expanduser()
    path = d / MANIFEST
    if not path.is_file():
        raise DataError(
            f"'{d}' is not a latent cache (no {MANIFEST}); make one with "
            f"`ecar cache-latents --config RECIPE --out {d}`."
        )
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} cannot be read ({e}); delete the cache and encode it again.") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path} is not a latent-cache manifest of format {FORMAT}; encode the cache again.")
    return m


def source_data_args(name: str) -> dict[str, Any] | None:
    """For ``latents:DIR``, the ``build_dataset`` arguments of the images it was encoded
    from (``name``, ``resolution``, ``channels``, ``seed``, ``shapes_size``); else ``None``."""
    if not name.strip().lower().startswith(PREFIX):
        return None
    return dict(read_manifest(name.strip()[len(PREFIX):].strip())["dataset"]["args"])


class LatentCacheDataset(ImageDataset):
    """The finished latent cache in ``directory`` (see the module docstring)."""

    yields_latents = True

    def __init__(self, directory: str | Path, split: str = "train"):
        d = Path(directory).expanduser()
        if split != "train":
            raise DataError(
                f"a latent cache holds training latents only (asked for split {split!r}); "
                "reference images come from the dataset it was encoded from"
            )
        m = read_manifest(d)
        if not m.get("complete"):
            done = len(m.get("shards", []))
            raise DataError(
                f"latent cache '{d}' is incomplete ({done} of {m.get('num_shards', '?')} shards); "
                "run the same `ecar cache-latents` command again to finish it"
            )
        self.directory, self.manifest = d, m
        src = m["dataset"]
        self.name, self.split = f"{PREFIX}{d}", "train"
        self.num_classes = int(src["num_classes"])
        self.channels = int(src["args"]["channels"])
        self.resolution = int(src["args"]["resolution"])
        self.class_names = list(src["class_names"])
        self._latents, self._labels, starts = [], [], [0]
        for i, shard in enumerate(m["shards"]):
            lat_file, lab_file = shard_files(i)
            try:
                lat = np.load(d / lat_file, mmap_mode="r")
                lab = np.load(d / lab_file, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise DataError(f"latent cache '{d}': shard {i} cannot be read ({e}); encode the cache again") from None
            if lat.shape[0] != shard["count"] or lab.shape[0] != shard["count"] or list(lat.shape[1:]) != m["latent_shape"]:
                raise DataError(f"latent cache '{d}': shard {i} does not match its manifest entry; encode the cache again")
            self._latents.append(lat)
            self._labels.append(lab)
            starts.append(starts[-1] + shard["count"])
        self._starts = np.asarray(starts)
        if starts[-1] != m["count"]:
            raise DataError(f"latent cache '{d}': shards hold {starts[-1]} latents, the manifest says {m['count']}")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[s])
        return torch.from_numpy(np.array(self._latents[s][j], dtype=np.float32)), int(self._labels[s][j])

    def _fingerprint_fields(self) -> dict[str, Any]:
        return {"name": "latents", "dataset": self.manifest["dataset"]["fingerprint"],
                "autoencoder": self.manifest["autoencoder"], "count": self.manifest["count"],
                "shards": [s["sha256"] for s in self.manifest["shards"]]}
