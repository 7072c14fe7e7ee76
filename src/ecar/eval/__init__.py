"""Evaluation: feature networks, FID / IS / precision-recall, generation cost, benchmarks.

* :mod:`ecar.eval.metrics` — pure metric functions on feature arrays.
* :mod:`ecar.eval.features` — feature networks (shipped digits/shapes classifiers, FID Inception).
* :mod:`ecar.eval.evaluate` — sample a model and measure it against cached training-split
  reference statistics (:func:`evaluate_model`, :func:`evaluate_checkpoint`).
* :mod:`ecar.eval.cost` — FLOPs and wall-clock time of a sampling call.
* :mod:`ecar.eval.bench` — same-budget training of several recipes, quality vs cost sweep,
  ``bench.json`` / ``bench.md`` / ``bench.png`` (matplotlib is imported only to plot).
"""

from ecar.eval.bench import DEFAULT_SWEEP, bench_table_markdown, plot_bench, run_bench, sweep_settings
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
    "DEFAULT_SWEEP",
    "VALID_METRICS",
    "bench_table_markdown",
    "default_cache_dir",
    "default_feature_net",
    "evaluate_checkpoint",
    "evaluate_model",
    "features_of_images",
    "fid_from_features",
    "fid_of_images",
    "frechet_distance",
    "inception_score",
    "plot_bench",
    "precision_recall",
    "reference_stats",
    "run_bench",
    "sweep_settings",
]
