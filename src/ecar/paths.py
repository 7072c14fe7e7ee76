"""Where ecar keeps per-user files (reference statistics, pretrained weights) and where its
packaged data files are (:func:`assets_dir`).

One root for every cache so a user moves or clears them in one place:
``$ECAR_CACHE`` when set, else ``$XDG_CACHE_HOME/ecar`` (the freedesktop convention), else
``~/.cache/ecar``. Nothing here depends on where the project's source tree lives.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "ECAR_CACHE"


def cache_root() -> Path:
    """The root of ecar's per-user caches (see the module docstring for the order)."""
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ecar"


def assets_dir() -> Path:
    """Directory of the packaged data files (``src/ecar/assets``: the shipped classifiers,
    ``fashion-mini``)."""
    return Path(__file__).resolve().parent / "assets"


def weights_dir(name: str) -> Path:
    """Per-user directory for the pretrained weights of part ``name`` (e.g. ``taef2``)."""
    return cache_root() / "weights" / name
