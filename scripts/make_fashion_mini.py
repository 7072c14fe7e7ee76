"""Make ``src/ecar/assets/fashion_mini.npz``: the ``fashion-mini`` dataset shipped in the wheel.

``fashion-mini`` is a fixed, class-balanced subset of Zalando's Fashion-MNIST (MIT licence,
https://github.com/zalandoresearch/fashion-mnist): the first ``--train-per-class`` images of
each class of the official training file (in file order) and the first
``--heldout-per-class`` of each class of the official test file. The defaults (600 and 200:
6,000 + 2,000 images, 3.5 MB compressed) are what ``ecar demo`` trains and measures on; the
file also records the indices into the official files and their SHA-256, so anyone can check
the provenance::

    python scripts/make_fashion_mini.py                       # reads the Debian package's files
    python scripts/make_fashion_mini.py --source DIR --out fashion_mini.npz

The result is deterministic: the same official files give the same arrays.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from ecar.data.fashion_mnist import _load_split, find_fashion_mnist
from ecar.paths import assets_dir


def subset(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` items of every class, in file order."""
    picks = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            raise SystemExit(f"class {c} has only {len(idx)} images, fewer than {per_class}")
        picks.append(idx)
    return np.sort(np.concatenate(picks))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help="folder of the four official IDX files (default: as data.name=fashion-mnist)")
    p.add_argument("--out", default=str(assets_dir() / "fashion_mini.npz"))
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--heldout-per-class", type=int, default=200)
    args = p.parse_args()
    source = find_fashion_mnist(args.source)
    arrays: dict[str, np.ndarray] = {}
    for split, per_class in (("train", args.train_per_class), ("heldout", args.heldout_per_class)):
        images, labels, digest = _load_split(source, split)
        idx = subset(labels, per_class)
        arrays[f"{split}_images"] = np.ascontiguousarray(images[idx])
        arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)
        arrays[f"{split}_index"] = idx.astype(np.int32)  # into the official file (train / t10k)
        arrays[f"{split}_source_sha256"] = np.array(digest)  # of the official split's decoded pixels + labels
    np.savez_compressed(args.out, **arrays)
    h = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    print(f"wrote {args.out}: {len(arrays['train_labels'])} train + {len(arrays['heldout_labels'])} held-out "
          f"images, {Path(args.out).stat().st_size / 1e6:.2f} MB, sha256 {h}")


if __name__ == "__main__":
    main()
