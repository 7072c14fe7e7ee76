"""The reference-statistics store: feature statistics of a dataset's real split, computed once
and cached on disk, keyed by everything that changes them.

:func:`reference_stats` extracts the features of the reference split
(:func:`default_reference_split`: the held-out split wherever the dataset has a real one, so a
model that memorises its training images gains nothing; the training split otherwise) once per
(dataset fingerprint and split, feature network, network weights) and caches mean, covariance
and a deterministic subsample of at most 10,000 real feature vectors in an ``.npz`` file under
``$ECAR_CACHE/refstats`` (default ``~/.cache/ecar/refstats``; see :mod:`ecar.paths`). A cache
file whose recorded key differs from the expected one is recomputed. The evaluation that
compares generated images with it is :mod:`ecar.eval.evaluate`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from ecar.build import build_data
from ecar.config import Config
from ecar.data import build_dataset
from ecar.eval.features import (ClassifierFeatureExtractor, FeatureExtractor, InceptionFeatureExtractor,
                                check_compatible, features_of_images, image_dataset_name, load_feature_net)
from ecar.eval.metrics import feature_stats
from ecar.paths import cache_root
from ecar.serialization import atomic_write

__all__ = ["REF_MAX_FEATS", "default_cache_dir", "default_reference_split", "reference_stats"]

log = logging.getLogger("ecar.eval")

REF_MAX_FEATS = 10_000
"""At most this many real feature vectors are kept in a reference cache (for precision/recall)."""
_CACHE_FORMAT = "ecar-refstats-v1"
_QUANTIZATION = "uint8"


_HELDOUT_REFERENCE = ("digits", "shapes", "fashion-mnist", "fashion-mini")


def default_reference_split(dataset_name: str) -> str:
    """Split that FID and precision/recall compare generated images with.

    ``heldout`` for datasets with a real held-out split — ``digits`` (300 images never
    trained on), ``shapes`` (5,000 renders from another seed stream), ``fashion-mnist``
    (the official 10,000 test images), ``fashion-mini`` (its 2,000 images of the official test
    file) — so the metric does not reward memorising the
    training images; ``train`` for ``imagefolder:…`` (its held-out split is a subset of
    the training files). ``latents:DIR``: that of the images the cache was encoded from.
    """
    kind = image_dataset_name(dataset_name).lower().partition(":")[0]
    return "heldout" if kind in _HELDOUT_REFERENCE else "train"


def default_cache_dir() -> Path:
    """``refstats`` under the root of ecar's caches (``$ECAR_CACHE``, else
    ``$XDG_CACHE_HOME/ecar``, else ``~/.cache/ecar``; :func:`ecar.paths.cache_root`)."""
    return cache_root() / "refstats"


def _fingerprint_dataset(dataset) -> dict:
    return {
        "name": getattr(dataset, "name", type(dataset).__name__),
        "split": getattr(dataset, "split", None),
        "fingerprint": dataset.fingerprint(),
        "size": len(dataset),
    }


_FILE_HASHES: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def _feature_net_id(extractor: FeatureExtractor) -> dict:
    """Name + a hash of the weights (or weights file) + preprocessing options."""
    ident: dict[str, Any] = {"name": extractor.name, "dim": int(extractor.feature_dim),
                             "type": type(extractor).__name__}
    if isinstance(extractor, ClassifierFeatureExtractor):
        h = hashlib.sha256()
        for k, v in sorted(extractor.net.state_dict().items()):
            if not v.is_floating_point():
                continue  # BatchNorm's step counter does not change the function
            h.update(k.encode())
            h.update(str(tuple(v.shape)).encode())
            h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        ident["weights_sha256"] = h.hexdigest()
    elif isinstance(extractor, InceptionFeatureExtractor):
        ident["weights_sha256"] = _file_sha256(extractor.path)
        ident["quantize"] = bool(extractor.quantize)
    else:
        ident["version"] = str(getattr(extractor, "version", ""))
    return ident


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    cast(Any, np.savez)(buf, **arrays)  # numpy's stub reads a keyword argument as allow_pickle
    atomic_write(path, buf.getvalue())


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]


# --------------------------------------------------------------------------- reference


def _build_split(source, split: str | None) -> Any:
    """A dataset object from an ImageDataset, or ``split`` (default
    :func:`default_reference_split`) of a Config's data section or of a dataset name."""
    if isinstance(source, Config):
        return build_data(source.data, split or default_reference_split(source.data.name), images=True)
    if isinstance(source, str):
        return build_dataset(source, split=split or default_reference_split(source))
    if hasattr(source, "fingerprint") and hasattr(source, "__getitem__"):
        return source
    raise TypeError("reference_stats needs an ImageDataset, a Config or a dataset name")


def reference_stats(
    dataset: Any,
    feature_net: str | FeatureExtractor,
    cache_dir: str | Path | None = None,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    progress: bool = False,
    split: str | None = None,
) -> dict:
    """Feature statistics of a real split, computed once and cached on disk.

    Args:
        dataset: an :class:`ecar.data.ImageDataset` (used as it is), a :class:`Config`
            (its ``data`` section) or a dataset name such as ``"digits"``; for the last two
            ``split`` is built (default :func:`default_reference_split`).
        feature_net: a feature network name or a :class:`FeatureExtractor`.
        cache_dir: directory of the ``.npz`` cache (default :func:`default_cache_dir`).
        max_images: use only the first ``max_images`` images (default: all; part of the key).
        device: where features are extracted (default CPU).

    Returns:
        ``{"mu": (D,), "sigma": (D, D), "feats": (M, D) with M ≤ 10,000 (a deterministic
        subsample, stored as float32, returned as float64), "n_images": int, "feature_net": str, "key": dict,
        "path": str, "cache_hit": bool}``.

    The cache key is (format, dataset name/split/fingerprint/size, ``max_images``, the
    feature network's name, dim and a SHA-256 of its weights, the quantisation policy). A
    file whose stored key differs (or that cannot be read) is recomputed and replaced.
    """
    ds = _build_split(dataset, split)
    split_name = str(getattr(ds, "split", split or "train"))
    extractor = feature_net if isinstance(feature_net, FeatureExtractor) else load_feature_net(feature_net)
    key: dict[str, Any] = {
        "format": _CACHE_FORMAT,
        "dataset": _fingerprint_dataset(ds),
        "max_images": max_images,
        "feature_net": _feature_net_id(extractor),
        "quantization": _QUANTIZATION,
        "max_feats": REF_MAX_FEATS,
    }
    key_json = json.dumps(key, sort_keys=True)
    digest = hashlib.sha256(key_json.encode()).hexdigest()[:16]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = directory / f"{_safe(key['dataset']['name'])}-{_safe(extractor.name)}-{digest}.npz"

    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) == key_json:
                    return {
                        "mu": z["mu"].astype(np.float64), "sigma": z["sigma"].astype(np.float64),
                        "feats": z["feats"].astype(np.float64), "n_images": int(z["n_images"]),
                        "feature_net": extractor.name, "split": split_name, "key": key,
                        "path": str(path), "cache_hit": True,
                    }
                log.info("reference cache %s has a different key; recomputing", path)
        except Exception as e:  # noqa: BLE001 - a broken cache file is simply rebuilt
            log.warning("reference cache %s is unreadable (%s); recomputing", path, e)

    n_total = len(ds) if max_images is None else min(len(ds), int(max_images))
    if n_total < 2:
        raise ValueError(f"the reference split has {n_total} image(s); FID needs at least 2")
    ds_res = getattr(ds, "resolution", None)
    ds_ch = getattr(ds, "channels", None)
    if ds_res is not None and ds_ch is not None:
        check_compatible(extractor, ds_ch, ds_res)
    feats_parts = []
    t0 = time.perf_counter()
    starts = range(0, n_total, batch_size)
    for start in tqdm(starts, desc=f"reference features ({extractor.name})", leave=False,
                      disable=not progress):
        stop = min(start + batch_size, n_total)
        x = torch.stack([ds[i][0] for i in range(start, stop)])
        f, _ = features_of_images(x, extractor, device)
        feats_parts.append(f)
    feats = np.concatenate(feats_parts, axis=0)
    mu, sigma = feature_stats(feats)
    if feats.shape[0] > REF_MAX_FEATS:
        keep = np.sort(np.random.default_rng(0).permutation(feats.shape[0])[:REF_MAX_FEATS])
        sub = feats[keep]
    else:
        sub = feats
    sub = sub.astype(np.float32).astype(np.float64)  # stored as float32: same numbers after a reload
    _atomic_savez(path, key=np.array(key_json), mu=mu, sigma=sigma, feats=sub.astype(np.float32),
                  n_images=np.array(feats.shape[0]))
    log.info("reference statistics of %s (%d images, %s features) in %.1f s -> %s",
             key["dataset"]["name"], feats.shape[0], extractor.name, time.perf_counter() - t0, path)
    return {"mu": mu, "sigma": sigma, "feats": sub, "n_images": int(feats.shape[0]),
            "feature_net": extractor.name, "split": split_name, "key": key, "path": str(path),
            "cache_hit": False}


