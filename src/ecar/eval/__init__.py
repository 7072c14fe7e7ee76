"""Evaluation: feature networks, FID / IS / precision-recall, generation cost.

* :mod:`ecar.eval.metrics` — pure metric functions on feature arrays.
* :mod:`ecar.eval.feature_nets` — the shipped digits / shapes / fashion classifier networks.
* :mod:`ecar.eval.features` — feature extractors (those classifiers, FID Inception) and the one
  path real and generated images take to features (quantise, check, extract).
* :mod:`ecar.eval.reference` — the reference-statistics store (real-split features, cached).
* :mod:`ecar.eval.evaluate` — sample a model's pipeline and measure it against the reference
  (:func:`evaluate_model`, :func:`evaluate_checkpoint`).
* :mod:`ecar.eval.cost` — FLOPs and wall-clock time of a sampling call.

The benchmark that trains and compares recipes, and its Pareto frontiers, are :mod:`ecar.bench`
(above this package).
"""

from ecar.eval.evaluate import VALID_METRICS, evaluate_checkpoint, evaluate_model, fid_of_images
from ecar.eval.features import default_feature_net, features_of_images
from ecar.eval.metrics import fid_from_features, frechet_distance, inception_score, precision_recall
from ecar.eval.reference import default_cache_dir, reference_stats

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
