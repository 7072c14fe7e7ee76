"""Sample-quality evaluation of a model or checkpoint: FID, Inception Score, precision/recall.

Pipeline (one code path for generated and real images)
-----------------------------------------------------
1. **Images.** Generated images come from :func:`ecar.generate.generate_images`, ``n`` of
   them with labels cycling through every class (:func:`ecar.generate.labels_for`), in
   blocks of ``batch_size``; block ``i`` is sampled with seed ``seed·1_000_003 + i``, so the
   numbers are a pure function of (model, sampler settings, ``n``, ``seed``, ``batch_size``)
   and memory stays bounded by one block plus the features.
2. **Quantisation.** Every image, real or generated, is clamped to [-1, 1] and rounded to
   the 256 levels of the uint8 file a user would save before it meets the feature network
   (:func:`quantize`), so that a model is judged by what it ships, and real and generated
   images go through the same preprocessing.
3. **Features.** A feature network from :mod:`ecar.eval.features` maps images to ``N×D``
   features (and class probabilities, if it has a classifier). The default depends on the
   dataset (:func:`default_feature_net`): the shipped ``digits`` / ``shapes`` classifiers
   for our small datasets, the FID InceptionV3 otherwise.
4. **Reference.** :func:`reference_stats` extracts the features of the reference split
   (:func:`default_reference_split`: the held-out split wherever the dataset has a real
   one, so a model that memorises its training images gains nothing; the training split
   otherwise) once per (dataset fingerprint and split, feature network, network weights)
   and caches mean,
   covariance and a deterministic subsample of at most 10,000 real feature vectors in an
   ``.npz`` file under ``$ECAR_CACHE/refstats`` (default ``~/.cache/ecar/refstats``; see :mod:`ecar.paths`).
   A cache file whose recorded key differs from the expected one is recomputed.
5. **Metrics** (:mod:`ecar.eval.metrics`): ``fid`` against the reference-split Gaussian;
   ``is`` from the feature network's class probabilities, in 10 splits as usual but
   never fewer than 100 samples a split (so 1 split for n < 200; skipped, with a note, for
   a network without a classifier head, e.g. Inception here); ``pr``: improved
   precision/recall with k = 3, real set = ``n`` cached reference features chosen by a
   fixed permutation (independent of ``seed``, so a new seed changes only the fakes).

Numbers computed with the ``digits``/``shapes`` networks are comparable between our runs
only, never with published FIDs (which use Inception features and 50k samples). One
sampling seed gives one draw of a noisy number: :func:`evaluate_seeds` repeats the
evaluation over several seeds and reports the mean and standard deviation.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ecar.build import build_data, load_for_inference
from ecar.config import Config
from ecar.data import build_dataset, source_data_args
from ecar.device import pick_device
from ecar.eval.features import ClassifierFeatureExtractor, FeatureExtractor, InceptionFeatureExtractor, load_feature_net
from ecar.eval.metrics import feature_stats, frechet_distance, inception_score, precision_recall
from ecar.generate import generate_images, labels_for
from ecar.methods import apply_sample_overrides, method_of, total_steps
from ecar.paths import cache_root
from ecar.samplers import SampleConfig
from ecar.serialization import atomic_write

__all__ = [
    "VALID_METRICS",
    "apply_sample_overrides",
    "default_cache_dir",
    "default_feature_net",
    "default_reference_split",
    "evaluate_seeds",
    "evaluate_checkpoint",
    "evaluate_model",
    "features_of_images",
    "fid_of_images",
    "quantize",
    "reference_stats",
    "sampler_info",
]

log = logging.getLogger("ecar.eval")

VALID_METRICS = ("fid", "is", "pr")
"""Metric names :func:`evaluate_model` accepts (``precision``/``recall`` are aliases of ``pr``)."""
_METRIC_ALIASES = {"fid": "fid", "is": "is", "pr": "pr", "precision": "pr", "recall": "pr"}

REF_MAX_FEATS = 10_000
"""At most this many real feature vectors are kept in a reference cache (for precision/recall)."""
PR_K = 3
_CACHE_FORMAT = "ecar-refstats-v1"
_QUANTIZATION = "uint8"


# --------------------------------------------------------------------------- helpers


def _image_dataset_name(dataset_name: str) -> str:
    """The name of the image dataset behind ``dataset_name`` (a latent cache's source)."""
    source = source_data_args(str(dataset_name))
    return str(source["name"] if source is not None else dataset_name).strip()


def default_feature_net(dataset_name: str) -> str:
    """Feature network used by default for a dataset: ``digits`` → ``"digits"``,
    ``shapes`` → ``"shapes"``, ``fashion-mnist`` (also ``fashion-mnist:DIR``) →
    ``"fashion"``, anything else (``imagefolder:…``) → ``"inception"``; ``latents:DIR`` →
    that of the images the cache was encoded from."""
    kind = _image_dataset_name(dataset_name).lower()
    if kind.partition(":")[0] == "fashion-mnist":
        return "fashion"
    return kind if kind in ("digits", "shapes") else "inception"


_HELDOUT_REFERENCE = ("digits", "shapes", "fashion-mnist")


def default_reference_split(dataset_name: str) -> str:
    """Split that FID and precision/recall compare generated images with.

    ``heldout`` for datasets with a real held-out split — ``digits`` (300 images never
    trained on), ``shapes`` (5,000 renders from another seed stream), ``fashion-mnist``
    (the official 10,000 test images) — so the metric does not reward memorising the
    training images; ``train`` for ``imagefolder:…`` (its held-out split is a subset of
    the training files). ``latents:DIR``: that of the images the cache was encoded from.
    """
    kind = _image_dataset_name(dataset_name).lower().partition(":")[0]
    return "heldout" if kind in _HELDOUT_REFERENCE else "train"


def default_cache_dir() -> Path:
    """``refstats`` under the root of ecar's caches (``$ECAR_CACHE``, else
    ``$XDG_CACHE_HOME/ecar``, else ``~/.cache/ecar``; :func:`ecar.paths.cache_root`)."""
    return cache_root() / "refstats"


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Clamp float images in [-1, 1] and round them to the 256 levels of a uint8 file.

    ``N×C×H×W`` float in, same shape float32 out (values ``k/127.5 − 1``, k = 0..255).
    """
    x = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x / 127.5 - 1.0


def _as_float_images(images: Any) -> torch.Tensor:
    """Float ``N×C×H×W`` in [-1, 1] from a float tensor or a uint8 ``N×H×W×C`` array/tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a float tensor N×C×H×W in [-1, 1] or uint8 N×H×W×C")
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [-1, 1] or uint8, got dtype {images.dtype}")
    return images


def _resolve_extractor(features: str | FeatureExtractor | None, dataset_name: str) -> FeatureExtractor:
    if isinstance(features, FeatureExtractor):
        return features
    name = features or default_feature_net(dataset_name)
    return load_feature_net(name)


def _check_compatible(extractor: FeatureExtractor, channels: int, size: int) -> None:
    """Clear error when a classifier feature net cannot read these images."""
    if isinstance(extractor, ClassifierFeatureExtractor):
        net = extractor.net
        if (net.in_channels, net.resolution) != (channels, size):
            raise ValueError(
                f"feature net '{extractor.name}' reads {net.in_channels}×{net.resolution}×"
                f"{net.resolution} images but these are {channels}×{size}×{size}; choose a "
                "matching feature net (features='inception' works for any size) or train one "
                "with scripts/train_feature_net.py"
            )


def features_of_images(
    images: Any, feature_net: str | FeatureExtractor, device: str | torch.device | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Quantised images → ``(features N×D, probs N×K or None)`` (float64 numpy)."""
    extractor = feature_net if isinstance(feature_net, FeatureExtractor) else load_feature_net(feature_net)
    x = _as_float_images(images)
    _check_compatible(extractor, x.shape[1], x.shape[2])
    x = quantize(x)
    if device is not None:
        x = x.to(device)
    return extractor(x)


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
    np.savez(buf, **arrays)
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
    key = {
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
        _check_compatible(extractor, ds_ch, ds_res)
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


def fid_of_images(images: Any, reference: dict, feature_net: str | FeatureExtractor,
                  device: str | torch.device | None = None) -> float:
    """FID of ``images`` (float ``N×C×H×W`` in [-1, 1] or uint8 ``N×H×W×C``) against a
    :func:`reference_stats` result, through the same quantisation and features as
    :func:`evaluate_model`."""
    feats, _ = features_of_images(images, feature_net, device)
    mu, sigma = feature_stats(feats)
    return frechet_distance(mu, sigma, reference["mu"], reference["sigma"])


# --------------------------------------------------------------------------- models


def _parse_metrics(metrics: Sequence[str] | str) -> list[str]:
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split() if m]
    out: list[str] = []
    for m in metrics:
        canon = _METRIC_ALIASES.get(str(m).strip().lower())
        if canon is None:
            raise ValueError(
                f"unknown metric {m!r}; valid metrics: {', '.join(VALID_METRICS)} "
                "(precision/recall are computed together as 'pr')"
            )
        if canon not in out:
            out.append(canon)
    if not out:
        raise ValueError(f"no metric requested; valid metrics: {', '.join(VALID_METRICS)}")
    return out


def sampler_info(model: nn.Module, cfg: Config, sample: SampleConfig | None = None) -> dict:
    """Sampler settings as recorded next to metrics.

    ``family`` and ``mode`` are the method's family and name; ``steps`` is what the
    method's :meth:`~ecar.methods.Method.step_counts` reports (an int for one-unit models
    such as DiT, the list of per-stage counts for E-CAR / FlowAR); ``total_steps`` is their
    sum (integration steps per image; guidance evaluates the conditional and null branches
    in the same batched pass).
    """
    sample = sample or cfg.sample
    method = method_of(cfg.model)
    steps = method.step_counts(model, sample)
    info: dict[str, Any] = {"family": method.family, "mode": method.name, "sampler": sample.sampler,
                            "steps": steps, "total_steps": total_steps(steps)}
    info["cfg"] = sample.cfg
    info["cfg_schedule"] = sample.cfg_schedule
    if sample.sampler == "euler_maruyama":
        info["noise_scale"] = sample.noise_scale
    return info


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    cfg: Config,
    autoencoder: nn.Module,
    n: int = 1000,
    metrics: Sequence[str] | str = ("fid", "is", "pr"),
    features: str | FeatureExtractor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    sample: SampleConfig | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    reference: dict | None = None,
    reference_split: str | None = None,
) -> dict:
    """Sample ``n`` images from ``model`` and measure them (see the module docstring).

    Args:
        model: a trained network of any family, on its device (its device is used for
            sampling, features and the precision/recall distances).
        cfg: its resolved config (``data.num_classes`` etc. filled in).
        autoencoder: latent → image decoder (``identity`` for pixel space).
        n: number of generated images (labels cycle through every class).
        metrics: any of ``"fid"``, ``"is"``, ``"pr"`` (precision + recall).
        features: feature network name or extractor (default :func:`default_feature_net`).
        seed, batch_size: sampling seed and block size (both change the exact samples).
        sample: sampler settings (default: the recipe's ``cfg.sample``).
        cache_dir: reference-statistics cache directory (default :func:`default_cache_dir`).
        reference: a precomputed :func:`reference_stats` result for the same feature net.
        reference_split: split to compare with (default :func:`default_reference_split`).

    Returns:
        ``{"fid", "is", "is_std", "is_splits", "precision", "recall"`` (those requested),
        ``"features", "reference_split", "n", "seed", "batch_size", "family", "mode", "sampler", "steps",
        "total_steps", "cfg", "cfg_schedule", "reference": {path, n_images, cache_hit},
        "notes": [...], "seconds"}``. ``is`` is omitted with a note when the feature net has
        no classifier. Same arguments → identical numbers.
    """
    wanted = _parse_metrics(metrics)
    if n < 2:
        raise ValueError(f"n must be >= 2 to estimate feature statistics, got {n}")
    if "pr" in wanted and n <= PR_K:
        raise ValueError(f"precision/recall need n > k={PR_K} samples, got n={n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    sample = sample or cfg.sample
    device = next(model.parameters()).device
    extractor = _resolve_extractor(features, cfg.data.name)
    if cfg.data.channels is not None and cfg.data.resolution is not None:
        _check_compatible(extractor, cfg.data.channels, cfg.data.resolution)
    notes: list[str] = []
    result: dict[str, Any] = {}

    if reference is None:
        reference = reference_stats(cfg, extractor, cache_dir=cache_dir, device=device,
                                    progress=progress, split=reference_split)
    elif reference.get("feature_net") not in (None, extractor.name):
        raise ValueError(f"reference was computed with feature net '{reference.get('feature_net')}', "
                         f"not '{extractor.name}'")

    labels = labels_for(n, cfg.data.num_classes)
    blocks = list(torch.split(labels, batch_size))
    feats_parts, probs_parts = [], []
    for i, y in enumerate(tqdm(blocks, desc=f"eval sampling (n={n})", leave=False,
                               disable=not progress)):
        imgs = generate_images(model, cfg, autoencoder, y, sample, seed=(seed * 1_000_003 + i) % 2**63,
                               batch_size=batch_size)["images"]
        f, p = features_of_images(imgs, extractor, device)
        feats_parts.append(f)
        if p is not None:
            probs_parts.append(p)
    feats = np.concatenate(feats_parts, axis=0)
    probs = np.concatenate(probs_parts, axis=0) if len(probs_parts) == len(feats_parts) else None

    if "fid" in wanted:
        mu, sigma = feature_stats(feats)
        result["fid"] = frechet_distance(mu, sigma, reference["mu"], reference["sigma"])
    if "is" in wanted:
        if probs is None:
            notes.append(f"is: feature net '{extractor.name}' has no classifier head; "
                         "Inception Score skipped")
        else:
            # 10 splits as in the reference code, but never fewer than 100 samples a split.
            splits = max(1, min(10, n // 100))
            result["is"], result["is_std"] = inception_score(probs, splits=splits)
            result["is_splits"] = splits
    if "pr" in wanted:
        real = reference["feats"]
        if real.shape[0] > n:
            pick = np.sort(np.random.default_rng(1).permutation(real.shape[0])[:n])
            real = real[pick]
        elif real.shape[0] < n:
            notes.append(f"pr: only {real.shape[0]} reference images for {n} samples")
        pr = precision_recall(real, feats, k=PR_K, device=device)
        result["precision"], result["recall"] = pr["precision"], pr["recall"]
        result["pr_k"] = PR_K

    result.update({"features": extractor.name, "reference_split": reference.get("split"),
                   "n": int(n), "seed": int(seed),
                   "batch_size": int(batch_size)})
    result.update(sampler_info(model, cfg, sample))
    result["reference"] = {"path": reference.get("path"), "n_images": reference.get("n_images"),
                           "cache_hit": reference.get("cache_hit")}
    result["notes"] = notes
    result["seconds"] = time.perf_counter() - t0
    return result


def evaluate_seeds(
    model: nn.Module,
    cfg: Config,
    autoencoder: nn.Module,
    seeds: Sequence[int] = (0, 1, 2),
    features: str | FeatureExtractor | None = None,
    reference: dict | None = None,
    reference_split: str | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> dict:
    """:func:`evaluate_model` once per sampling seed, with the spread over seeds.

    Every metric ``m`` that the runs return as a number gets ``m_mean`` and ``m_std``
    (sample standard deviation, ddof = 1; 0 for a single seed) and ``m_per_seed``; ``fid``
    itself is the mean. The rest (features, reference split, sampler settings) comes from
    the first run; ``seeds`` lists the seeds. Other keyword arguments go to
    :func:`evaluate_model`.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("evaluate_seeds needs at least one seed")
    extractor = _resolve_extractor(features, cfg.data.name)
    if reference is None:
        device = next(model.parameters()).device
        reference = reference_stats(cfg, extractor, cache_dir=cache_dir, device=device,
                                    progress=progress, split=reference_split)
    runs = [evaluate_model(model, cfg, autoencoder, seed=s, features=extractor, reference=reference,
                           progress=progress, **kwargs) for s in seeds]
    out = dict(runs[0])
    out.pop("seed", None)
    out["seeds"] = seeds
    for key in ("fid", "is", "precision", "recall"):
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if len(vals) != len(runs):
            continue
        arr = np.asarray(vals, dtype=np.float64)
        out[f"{key}_per_seed"] = [float(v) for v in arr]
        out[f"{key}_mean"] = float(arr.mean())
        out[f"{key}_std"] = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
        out[key] = out[f"{key}_mean"]
    out["seconds"] = float(sum(r["seconds"] for r in runs))
    return out


def evaluate_checkpoint(
    ckpt_dir: str | Path,
    n: int = 1000,
    metrics: Sequence[str] | str = ("fid", "is", "pr"),
    features: str | FeatureExtractor | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    sample_overrides: dict | Sequence[str] | None = None,
    use_ema: bool = True,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    seeds: Sequence[int] | None = None,
    reference_split: str | None = None,
) -> dict:
    """Load a checkpoint (EMA weights by default) and :func:`evaluate_model` it (or, with
    ``seeds``, :func:`evaluate_seeds` over those seeds; ``seed`` is then ignored).

    The result also records ``ckpt``, ``model`` (registry name), ``train_step``, ``params``
    and ``ema``.
    """
    dev = device if isinstance(device, torch.device) else pick_device(device)
    loaded = load_for_inference(str(ckpt_dir), dev, use_ema=use_ema)
    sample = apply_sample_overrides(loaded.cfg.sample, sample_overrides)
    common = dict(n=n, metrics=metrics, features=features, batch_size=batch_size, sample=sample,
                  progress=progress, cache_dir=cache_dir, reference_split=reference_split)
    if seeds:
        res = evaluate_seeds(loaded.model, loaded.cfg, loaded.autoencoder, seeds=seeds, **common)
    else:
        res = evaluate_model(loaded.model, loaded.cfg, loaded.autoencoder, seed=seed, **common)
    head = {"ckpt": str(ckpt_dir), "model": loaded.cfg.model.name, "train_step": loaded.step,
            "params": sum(p.numel() for p in loaded.model.parameters()), "ema": use_ema,
            "device": str(dev)}
    return {**head, **res}
