"""Sample-quality evaluation of a model or checkpoint: FID, Inception Score, precision/recall.

Pipeline (one code path for generated and real images)
-----------------------------------------------------
1. **Images.** Generated images come from the model's :class:`~ecar.pipeline.Pipeline`, ``n``
   of them with labels cycling through every class, in blocks of ``batch_size``; block ``i`` is sampled with seed ``seed·1_000_003 + i``, so the
   numbers are a pure function of (model, sampler settings, ``n``, ``seed``, ``batch_size``)
   and memory stays bounded by one block plus the features.
2. **Quantisation.** Every image, real or generated, is clamped to [-1, 1] and rounded to
   the 256 levels of the uint8 file a user would save before it meets the feature network
   (:func:`~ecar.eval.features.quantize`), so that a model is judged by what it ships, and real and generated
   images go through the same preprocessing.
3. **Features.** A feature network from :mod:`ecar.eval.features` maps images to ``N×D``
   features (and class probabilities, if it has a classifier). The default depends on the
   dataset (:func:`~ecar.eval.features.default_feature_net`): the shipped ``digits`` / ``shapes`` classifiers
   for our small datasets, the FID InceptionV3 otherwise.
4. **Reference.** The features of the reference split come from the store of
   :mod:`ecar.eval.reference` (computed once, cached on disk).
5. **Metrics** (:mod:`ecar.eval.metrics`): ``fid`` against the reference-split Gaussian;
   ``acc``: the class accuracy of the samples, the fraction that the feature network's
   classifier assigns to the class they were generated for (the shipped classifiers of
   digits, shapes and Fashion-MNIST; skipped, with a note, for a network without one);
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

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ecar.device import pick_device
from ecar.eval.features import FeatureExtractor, check_compatible, default_feature_net, features_of_images, load_feature_net
from ecar.eval.metrics import feature_stats, frechet_distance, inception_score, precision_recall
from ecar.eval.reference import reference_stats
from ecar.methods import apply_sample_overrides, total_steps
from ecar.pipeline import Pipeline, load
from ecar.samplers import SampleConfig

__all__ = [
    "DEFAULT_METRICS",
    "VALID_METRICS",
    "evaluate_checkpoint",
    "evaluate_model",
    "evaluate_seeds",
    "fid_of_images",
    "sampler_info",
]

VALID_METRICS = ("fid", "is", "pr", "acc")
"""Metric names :func:`evaluate_model` accepts (``precision``/``recall`` are aliases of ``pr``,
``accuracy`` of ``acc``)."""
DEFAULT_METRICS = VALID_METRICS
"""What :func:`evaluate_model` and ``ecar eval`` measure unless told otherwise."""
_METRIC_ALIASES = {"fid": "fid", "is": "is", "pr": "pr", "precision": "pr", "recall": "pr",
                   "acc": "acc", "accuracy": "acc"}

PR_K = 3


def _resolve_extractor(features: str | FeatureExtractor | None, dataset_name: str) -> FeatureExtractor:
    if isinstance(features, FeatureExtractor):
        return features
    name = features or default_feature_net(dataset_name)
    return load_feature_net(name)


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


def sampler_info(pipe: Pipeline, sample: SampleConfig | None = None) -> dict:
    """Sampler settings as recorded next to metrics.

    ``family`` and ``mode`` are the method's family and name; ``steps`` is what the
    method's :meth:`~ecar.methods.Method.step_counts` reports (an int for one-unit models
    such as DiT, the list of per-stage counts for E-CAR / FlowAR); ``total_steps`` is their
    sum (integration steps per image; guidance evaluates the conditional and null branches
    in the same batched pass).
    """
    sample = sample or pipe.sample
    method = pipe.method
    steps = pipe.step_counts(sample)
    info: dict[str, Any] = {"family": method.family, "mode": method.name, "sampler": sample.sampler,
                            "steps": steps, "total_steps": total_steps(steps)}
    info["cfg"] = sample.cfg
    info["cfg_schedule"] = sample.cfg_schedule
    if sample.sampler == "euler_maruyama":
        info["noise_scale"] = sample.noise_scale
    return info


@torch.no_grad()
def evaluate_model(
    pipe: Pipeline,
    n: int = 1000,
    metrics: Sequence[str] | str = DEFAULT_METRICS,
    features: str | FeatureExtractor | None = None,
    seed: int = 0,
    batch_size: int = 256,
    sample: SampleConfig | None = None,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    reference: dict | None = None,
    reference_split: str | None = None,
) -> dict:
    """Sample ``n`` images from ``pipe`` and measure them (see the module docstring).

    Args:
        pipe: a trained model of any method (its device is used for sampling, features and
            the precision/recall distances; its config has ``data.num_classes`` etc. filled in).
        n: number of generated images (labels cycle through every class).
        metrics: any of ``"fid"``, ``"is"``, ``"pr"`` (precision + recall), ``"acc"`` (class accuracy).
        features: feature network name or extractor (default
            :func:`~ecar.eval.features.default_feature_net`).
        seed, batch_size: sampling seed and block size (both change the exact samples).
        sample: sampler settings (default: the recipe's ``cfg.sample``).
        cache_dir: reference-statistics cache directory (default
            :func:`~ecar.eval.reference.default_cache_dir`).
        reference: a precomputed :func:`~ecar.eval.reference.reference_stats` result for the
            same feature net.
        reference_split: split to compare with (default
            :func:`~ecar.eval.reference.default_reference_split`).

    Returns:
        ``{"fid", "is", "is_std", "is_splits", "precision", "recall", "acc"`` (those requested),
        ``"features", "reference_split", "n", "seed", "batch_size", "family", "mode", "sampler", "steps",
        "total_steps", "cfg", "cfg_schedule", "reference": {path, n_images, cache_hit},
        "notes": [...], "seconds"}``. ``is`` and ``acc`` are omitted with a note when the
        feature net has no classifier. Same arguments → identical numbers.
    """
    wanted = _parse_metrics(metrics)
    if n < 2:
        raise ValueError(f"n must be >= 2 to estimate feature statistics, got {n}")
    if "pr" in wanted and n <= PR_K:
        raise ValueError(f"precision/recall need n > k={PR_K} samples, got n={n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    cfg = pipe.cfg
    sample = sample or cfg.sample
    device = pipe.device
    extractor = _resolve_extractor(features, cfg.data.name)
    if cfg.data.channels is not None and cfg.data.resolution is not None:
        check_compatible(extractor, cfg.data.channels, cfg.data.resolution)
    notes: list[str] = []
    result: dict[str, Any] = {}

    if reference is None:
        reference = reference_stats(cfg, extractor, cache_dir=cache_dir, device=device,
                                    progress=progress, split=reference_split)
    elif reference.get("feature_net") not in (None, extractor.name):
        raise ValueError(f"reference was computed with feature net '{reference.get('feature_net')}', "
                         f"not '{extractor.name}'")

    labels = pipe.labels(n)
    blocks = list(torch.split(labels, batch_size))
    feats_parts, probs_parts = [], []
    for i, y in enumerate(tqdm(blocks, desc=f"eval sampling (n={n})", leave=False,
                               disable=not progress)):
        imgs = pipe(labels=y, sample=sample, seed=(seed * 1_000_003 + i) % 2**63, batch_size=batch_size).tensor
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
    if "acc" in wanted:
        if probs is None:
            notes.append(f"acc: feature net '{extractor.name}' has no classifier head; class accuracy skipped")
        else:
            result["acc"] = float((probs.argmax(1) == labels.cpu().numpy()).mean())
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
    result.update(sampler_info(pipe, sample))
    result["reference"] = {"path": reference.get("path"), "n_images": reference.get("n_images"),
                           "cache_hit": reference.get("cache_hit")}
    result["notes"] = notes
    result["seconds"] = time.perf_counter() - t0
    return result


def evaluate_seeds(
    pipe: Pipeline,
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
    extractor = _resolve_extractor(features, pipe.cfg.data.name)
    if reference is None:
        reference = reference_stats(pipe.cfg, extractor, cache_dir=cache_dir, device=pipe.device,
                                    progress=progress, split=reference_split)
    runs = [evaluate_model(pipe, seed=s, features=extractor, reference=reference,
                           progress=progress, **kwargs) for s in seeds]
    out = dict(runs[0])
    out.pop("seed", None)
    out["seeds"] = seeds
    for key in ("fid", "is", "precision", "recall", "acc"):
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
    metrics: Sequence[str] | str = DEFAULT_METRICS,
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
    pipe = load(ckpt_dir, dev, ema=use_ema)
    sample = apply_sample_overrides(pipe.sample, sample_overrides)
    common: dict[str, Any] = dict(n=n, metrics=metrics, features=features, batch_size=batch_size, sample=sample,
                                  progress=progress, cache_dir=cache_dir, reference_split=reference_split)
    if seeds:
        res = evaluate_seeds(pipe, seeds=seeds, **common)
    else:
        res = evaluate_model(pipe, seed=seed, **common)
    head = {"ckpt": str(ckpt_dir), "model": pipe.name, "train_step": pipe.step, "params": pipe.params,
            "ema": use_ema, "device": str(dev)}
    return {**head, **res}
