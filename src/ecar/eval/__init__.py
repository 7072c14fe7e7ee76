"""Evaluation: feature networks, FID / IS / precision-recall, generation cost.

* :mod:`ecar.eval.metrics` — pure metric functions on feature arrays.
* :mod:`ecar.eval.features` — feature networks (shipped digits/shapes/fashion classifiers, FID Inception).
* :mod:`ecar.eval.evaluate` — sample a model and measure it against cached reference-split
  statistics (:func:`evaluate_model`, :func:`evaluate_checkpoint`).
* :mod:`ecar.eval.cost` — FLOPs and wall-clock time of a sampling call.
* :mod:`ecar.eval.pareto` — Pareto frontiers and equal-quality cost ratios.

The benchmark that trains and compares recipes is :mod:`ecar.bench` (above this package).
"""

from ecar.eval.evaluate import (
    VALID_METRICS,
    default_cache_dir,
    default_feature_net,
    evaluate_checkpoint,
    evaluate_model,
    features_of_images,
    fid_of_images,
    reference_stats,
)
from ecar.eval.metrics import fid_from_features, frechet_distance, inception_score, precision_recall

__all__ = [
    "VALID_METRICS",
    "default_cache_dir",
    "default_feature_net",
    "evaluate_checkpoint",
    "evaluate_model",
    "features_of_images",
    "fid_from_features",
    "fid_of_images",
    "frechet_distance",
    "inception_score",
    "precision_recall",
    "reference_stats",
]
