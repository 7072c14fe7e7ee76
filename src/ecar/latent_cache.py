"""``ecar cache-latents``: encode a recipe's training images once through its autoencoder.

Training in latent space re-encodes every batch through the autoencoder unless the latents
are cached. :func:`cache_latents` writes them as described in :mod:`ecar.data.latents`:
shards of memory-mapped arrays plus a manifest. Properties:

* **Deterministic**: the images are encoded in shard order, each shard in fixed batches
  from its first image, so the same recipe gives the same bytes.
* **Resumable**: each shard is written atomically and then recorded in the manifest
  (also written atomically); a rerun after an interruption verifies the recorded shards and
  encodes only the rest — its files equal those of an uninterrupted run.
* **One encoder at a time**: the directory's lock (:mod:`ecar.lock`) is held while encoding;
  a second ``ecar cache-latents`` into it is refused at once, naming the first.
* **Refuses a mismatch**: a directory whose manifest records another dataset, autoencoder
  (name, scale, weights), latent shape, dtype or shard size is not touched; the message
  names the fields that differ. Training on ``latents:DIR`` checks the autoencoder the
  same way (:func:`check_cache_autoencoder`), so latents never meet a decoder they were
  not made for.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ecar.autoencoders import Autoencoder, AutoencoderConfig, build_autoencoder
from ecar.build import build_data, latent_spec, resolved_data
from ecar.config import Config
from ecar.data import DataError, ImageDataset
from ecar.data.latents import FORMAT, MANIFEST, read_manifest, shard_files
from ecar.lock import check_not_locked, writer_lock
from ecar.serialization import atomic_write, entries

__all__ = ["DTYPES", "autoencoder_identity", "cache_latents", "check_cache_autoencoder"]

log = logging.getLogger(__name__)

DTYPES = {"float32": np.float32, "float16": np.float16}
# manifest fields that must agree before a cache directory is reused
_IDENTITY = ("format", "dataset", "autoencoder", "latent_shape", "dtype", "shard_size", "count")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def autoencoder_identity(ae: Autoencoder, cfg: AutoencoderConfig) -> dict[str, Any]:
    """Name, scale and a SHA-256 over the autoencoder's weights (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(ae.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {"name": cfg.name, "scale": float(cfg.scale), "weights_sha256": h.hexdigest()}


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: cache value -> recipe value`` for every leaf that differs (bounded reprs)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: cache {str(a)[:80]} vs recipe {str(b)[:80]}")
    return out


def _expected_manifest(cfg: Config, ds: ImageDataset, ae: Autoencoder, latent_shape: list[int],
                       dtype: str, shard_size: int) -> dict[str, Any]:
    d = cfg.data
    args = {"name": d.name, "resolution": ds.resolution, "channels": ds.channels, "seed": d.seed,
            "shapes_size": d.shapes_size, "hflip": d.hflip}
    return {
        "format": FORMAT,
        "dataset": {"args": args, "fingerprint": ds.fingerprint(), "num_classes": ds.num_classes,
                    "class_names": list(ds.class_names)},
        "autoencoder": autoencoder_identity(ae, cfg.autoencoder),
        "latent_shape": latent_shape,
        "dtype": dtype,
        "shard_size": shard_size,
        "count": len(ds),
    }


def _verified_shards(out: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's shard entries whose files are present and intact (a prefix)."""
    good = []
    for i, entry in enumerate(manifest.get("shards", [])):
        files = shard_files(i)
        try:
            digests = [_sha256((out / f).read_bytes()) for f in files]
        except OSError:
            break
        if digests != entry.get("sha256"):
            log.warning("latent cache %s: shard %d does not match its manifest entry; encoding it again", out, i)
            break
        good.append(entry)
    return good


def cache_latents(cfg: Config, out: str | Path, *, batch_size: int = 64, shard_size: int = 4096,
                  dtype: str = "float32", device: torch.device | str = "cpu",
                  progress: bool = True) -> dict[str, Any]:
    """Encode the training split of ``cfg.data`` (with ``data.hflip`` copies) through
    ``cfg.autoencoder`` into ``out``; resume or refuse an existing cache (module docstring).

    Returns the final manifest. Raises :class:`~ecar.data.DataError` for a directory that
    holds something else or a cache of another recipe.
    """
    if dtype not in DTYPES:
        raise DataError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if batch_size < 1 or shard_size < 1:
        raise DataError(f"batch size and shard size must be >= 1, got {batch_size} and {shard_size}")
    if shard_size % batch_size:
        shard_size = -(-shard_size // batch_size) * batch_size  # whole batches per shard
    if cfg.data.name.strip().lower().startswith("latents:"):
        raise DataError("cache-latents encodes images; the recipe's data.name is already a latent cache")
    out = Path(out).expanduser()
    check_not_locked(out, "latent cache")  # before the minutes of building: refused at once
    device = torch.device(device)
    ds = build_data(cfg.data, "train")
    cfg_data = resolved_data(cfg.data, ds)
    assert cfg_data.channels is not None  # resolved from the dataset
    ae = build_autoencoder(cfg.autoencoder, cfg_data.channels).to(device).eval()
    spec = latent_spec(replace(cfg, data=cfg_data), ae)
    expected = _expected_manifest(cfg, ds, ae, [spec.channels, spec.size, spec.size], dtype, shard_size)
    num_shards = -(-len(ds) // shard_size)
    # one encoder at a time (ecar.lock): two would write the same shards and manifest
    with writer_lock(out, "latent cache", lambda: _earlier_cache(out, expected)) as old:
        return _encode(out, ds, ae, expected, old, num_shards, shard_size, batch_size, dtype, device, progress)


def _earlier_cache(out: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of an earlier cache of this recipe in ``out`` (None: new or empty); refuses
    a cache of another recipe and a directory holding anything else."""
    if (out / MANIFEST).is_file():
        old = read_manifest(out)
        diffs = _differences({k: old.get(k) for k in _IDENTITY}, {k: expected[k] for k in _IDENTITY})
        if diffs:
            raise DataError(
                f"'{out}' holds a latent cache of another recipe ({'; '.join(diffs[:6])}); "
                "choose another --out, or delete that directory to encode this recipe there"
            )
        return old
    if out.exists() and (not out.is_dir() or entries(out)):
        raise DataError(f"'{out}' exists and is not an (empty) latent-cache directory; choose another --out")
    return None


def _encode(out: Path, ds: ImageDataset, ae: Autoencoder, expected: dict[str, Any], old: dict[str, Any] | None,
            num_shards: int, shard_size: int, batch_size: int, dtype: str, device: torch.device,
            progress: bool) -> dict[str, Any]:
    """Encode the shards that ``out`` lacks (the lock held: :func:`cache_latents`)."""
    done: list[dict[str, Any]] = []
    if old is not None:
        done = _verified_shards(out, old)
        if old.get("complete") and len(done) == num_shards:
            log.info("latent cache %s is complete (%d latents); nothing to do", out, expected["count"])
            return old
        log.info("latent cache %s: %d of %d shards already encoded, resuming", out, len(done), num_shards)
    out.mkdir(parents=True, exist_ok=True)

    manifest = {**expected, "num_shards": num_shards, "shards": done, "complete": False}
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    np_dtype = DTYPES[dtype]
    t0 = time.perf_counter()
    bar = tqdm(total=len(ds), initial=min(len(done) * shard_size, len(ds)), desc="encoding latents",
               unit="img", disable=not progress)
    try:
        for k in range(len(done), num_shards):
            lo, hi = k * shard_size, min((k + 1) * shard_size, len(ds))
            lat_parts, labels = [], []
            for b in range(lo, hi, batch_size):
                items = [ds[i] for i in range(b, min(b + batch_size, hi))]
                x = torch.stack([it[0] for it in items]).to(device)
                with torch.no_grad():
                    lat_parts.append(ae.encode(x).float().cpu().numpy().astype(np_dtype))
                labels += [int(it[1]) for it in items]
                bar.update(len(items))
            files = shard_files(k)
            blobs = [_npy_bytes(np.concatenate(lat_parts)), _npy_bytes(np.asarray(labels, dtype=np.int64))]
            for f, blob in zip(files, blobs):
                atomic_write(out / f, blob)
            manifest["shards"].append({"count": hi - lo, "sha256": [_sha256(b) for b in blobs]})
            manifest["complete"] = len(manifest["shards"]) == num_shards
            atomic_write(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    finally:
        bar.close()
    log.info("encoded %d latents into %s in %.1f s", len(ds), out, time.perf_counter() - t0)
    return manifest


def check_cache_autoencoder(dataset: ImageDataset, ae: Autoencoder, cfg: AutoencoderConfig) -> None:
    """For a latent-cache dataset: the recipe's autoencoder must be the one that encoded it."""
    manifest = getattr(dataset, "manifest", None)
    if not getattr(dataset, "yields_latents", False) or manifest is None:
        return
    diffs = _differences(manifest["autoencoder"], autoencoder_identity(ae, cfg))
    if diffs:
        raise DataError(
            f"the latent cache {dataset.name} was encoded with another autoencoder "
            f"({'; '.join(diffs)}); train with the autoencoder section it was made with, "
            "or encode the cache again with this recipe"
        )
