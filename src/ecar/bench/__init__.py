"""``ecar bench``: train recipes for the same budget, measure quality against sampling cost.

* :mod:`ecar.bench.run` — training (or loading) every model, the sampler × step sweep
  (each method scales its own step counts), ``bench.json`` / ``bench.md`` / ``bench.png``.
* :mod:`ecar.bench.report` — equal-quality summary along Pareto frontiers, Markdown, plot
  (matplotlib is imported only to plot).
"""

from ecar.bench.report import bench_table_markdown, headline_markdown, plot_bench, summarize
from ecar.bench.run import DEFAULT_SAMPLERS, DEFAULT_SEEDS, DEFAULT_SWEEP, run_bench, sweep_settings

__all__ = ["DEFAULT_SAMPLERS", "DEFAULT_SEEDS", "DEFAULT_SWEEP", "bench_table_markdown",
           "headline_markdown", "plot_bench", "run_bench", "summarize", "sweep_settings"]
