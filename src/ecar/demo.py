"""``ecar demo``: the main job on the embedded default — train E-CAR on digits, show the result.

The recipe is embedded here so the demo works from an installed wheel; it is the same as
``configs/digits_ecar.yaml`` (a test keeps the two equal). The demo trains for a wall-clock
budget, then writes a 10×10 sample grid (one row per class), a strip of every stage's
output, and ``metrics.json`` with size, training and cost numbers.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import yaml

from ecar.checkpoint import is_run
from ecar.config import Config, config_from_dict, merge_overrides
from ecar.errors import OutputExistsError
from ecar.eval.cost import measure_cost
from ecar.eval.evaluate import evaluate_model
from ecar.imageio import save_grid, save_png, to_uint8
from ecar.lock import writer_lock
from ecar.pipeline import Pipeline, load
from ecar.pipeline.output import stages_strip
from ecar.serialization import entries, is_empty_dir
from ecar.train.trainer import train

log = logging.getLogger("ecar.demo")

DEMO_RECIPE = """\
# E-CAR on digits (16x16, 1 channel, pixel space): patch 4 -> token grids 1, 2, 4
# (latents 4x4, 8x8, 16x16). Each stage denoises only its window of the path: the coarse
# stage takes the path from noise to 0.75, the next ones to 0.95 and 1.
data:
  name: digits
model:
  name: ecar-tiny
  hidden: 128
  depth: 4
  heads: 4
  patch: 4
  head: mlp
  head_width: 128
  head_depth: 3
  windows: [0.75, 0.95]   # stage ends tau_1, tau_2 (tau_3 = 1); chosen by experiment, docs/ecar.md
  stage_weights: [1, 4, 16]   # every token alike: the fine stage's grain decides the FID
flow:
  time_sampling: uniform      # logit-normal leaves u = 0 (each stage's first step) untrained
  class_dropout: 0.1
sample:
  sampler: euler
  stage_steps: [10, 8, 6]
  cfg: 2.0
train:
  max_steps: 1500
  batch_size: 64
  lr: 1.0e-3
  warmup_steps: 100
  schedule: cosine
  ema_decay: 0.995
  log_every: 25
  ckpt_every: 500
"""

DEFAULT_MINUTES = 4.0
DEFAULT_OUT = "ecar-demo"
"""Where ``ecar demo`` writes by default; ``ecar serve`` without ``--ckpt`` looks there."""


def demo_checkpoint(out: str | Path = DEFAULT_OUT) -> Path:
    """The checkpoint directory the demo writes into ``out``."""
    return Path(out) / "run"


DEMO_OUTPUTS = ("samples.png", "stages.png", "metrics.json", "run")
"""Everything the demo writes into its ``--out`` directory."""


def demo_config(minutes: float, overrides: list[str] | None = None) -> Config:
    raw = merge_overrides(yaml.safe_load(DEMO_RECIPE), [f"train.max_minutes={minutes}", *(overrides or [])])
    return config_from_dict(raw)


def run_demo(
    out: str | Path = DEFAULT_OUT,
    minutes: float = DEFAULT_MINUTES,
    overrides: list[str] | None = None,
    progress: bool = True,
    fid_samples: int = 1000,
) -> dict:
    """Train, sample, measure; returns the metrics written to ``out/metrics.json``.

    ``out`` must be new, empty, or an earlier demo's output, which is then replaced (and
    only after the arguments are validated): :func:`check_demo_out`.
    """
    out = Path(out)
    run = demo_checkpoint(out)
    cfg = demo_config(minutes, overrides)
    # one demo per folder at a time (ecar.lock): the lock on ``out`` is held to the end
    with writer_lock(out, "demo output folder", lambda: check_demo_out(out)) as earlier:
        if earlier:
            log.info("replacing the previous demo output in %s", out)
        return _run_demo(out, run, cfg, progress, fid_samples)


def _run_demo(out: Path, run: Path, cfg: Config, progress: bool, fid_samples: int) -> dict:
    t0 = time.perf_counter()
    summary = train(cfg, run, progress=progress, overwrite=is_run(run))
    pipe = load(run, "cpu")
    k = pipe.num_classes
    labels = torch.arange(k).repeat_interleave(10)  # row i: ten samples of class i
    result = pipe.stages(labels=labels, seed=0, batch_size=len(labels))
    assert result.stages is not None
    save_grid(to_uint8(result.tensor), out / "samples.png", nrow=10)
    pick = torch.arange(k) * 10  # one sample of each class
    save_png(stages_strip([s[pick] for s in result.stages], max_rows=k), out / "stages.png")
    cost = measure_cost(pipe)  # the one timing protocol (ecar.eval.cost)
    metrics = {
        "model": pipe.name,
        "mode": pipe.method.name,
        "params": pipe.params,
        "train_steps": summary["step"],
        "train_seconds": round(summary["train_seconds"], 1),
        "gflops_per_image": cost.gflops_per_image,
        "seconds_per_image": cost.seconds_per_image,
        "stage_steps": pipe.step_counts(),
        "cfg": pipe.sample.cfg,
    }
    metrics.update(_fid(pipe, fid_samples))
    metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def check_demo_out(out: Path) -> bool:
    """Whether ``out`` holds an earlier demo's output (to replace); raises
    :class:`OutputExistsError` for anything else that is not new or empty.

    An earlier demo's output is recognised by its names (:data:`DEMO_OUTPUTS`) and its
    ``run/`` being an ecar run; a directory with any other file is someone else's, and the
    demo must not replace a ``samples.png`` or a ``run/`` that it did not write.
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' exists and is not a directory; choose another --out")
    if not out.is_dir():
        return False
    names = sorted(p.name for p in entries(out))
    if not names:
        return False
    run = out / "run"
    if set(names) <= set(DEMO_OUTPUTS) and (is_run(run) or (names == ["run"] and is_empty_dir(run))):
        return True
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise OutputExistsError(
        f"--out '{out}' holds files that are not an earlier demo's output ({shown}); the demo "
        "writes only into a new or empty directory, or replaces its own earlier output. "
        "Choose another --out"
    )


def _fid(pipe: Pipeline, n: int) -> dict:
    """FID against the digits held-out split (default reference) with the shipped digits net."""
    if n <= 0:
        return {}
    res = evaluate_model(pipe, n=n, metrics=("fid",), seed=0, progress=False)
    return {"fid": res["fid"], "fid_samples": n, "fid_features": res["features"],
            "fid_reference_split": res["reference_split"]}
