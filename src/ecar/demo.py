"""``ecar demo``: the main job on the embedded default — train E-CAR on fashion-mini, show the result.

The data ship inside the package (``fashion-mini``: 6,000 Fashion-MNIST training images and
2,000 held-out ones, :mod:`ecar.data.fashion_mini`) and the recipe is embedded here, so the
demo works from an installed wheel with nothing else; the recipe is the same as
``configs/fashion_mini_ecar.yaml`` (a test keeps the two equal; how it was chosen:
docs/demo.md). The demo trains for a wall-clock budget, then writes a sample grid (one row
per class, named), a strip of every stage's output, an animation of a few samples growing
from the coarsest stage to the image, and ``metrics.json`` with size, training and cost
numbers, the FID against the held-out split and the class accuracy of the samples by the
shipped classifier.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from ecar.checkpoint import is_run
from ecar.config import Config, config_from_dict, merge_overrides
from ecar.data import build_dataset
from ecar.errors import OutputExistsError
from ecar.eval.cost import measure_cost
from ecar.eval.evaluate import evaluate_model
from ecar.imageio import auto_scale, make_grid, save_png, to_uint8
from ecar.layers import upsample
from ecar.lock import writer_lock
from ecar.pipeline import Pipeline, load
from ecar.pipeline.output import stages_strip
from ecar.serialization import entries, is_empty_dir
from ecar.train.trainer import train

log = logging.getLogger("ecar.demo")

DEMO_RECIPE = """\
# E-CAR on fashion-mini (8,000 Fashion-MNIST images shipped in the package; 32x32 grey, pixel
# space): patch 4 -> token grids 1, 2, 4, 8. Each stage denoises only its window of the path.
# The Fashion-MNIST bench recipe (configs/fashion_ecar.yaml) with training settings for a
# budget of minutes; chosen by measurement: docs/demo.md.
data:
  name: fashion-mini
model:
  name: ecar-tiny
  hidden: 192
  depth: 1
  heads: 6
  patch: 4
  ar_input: parent
  head: transformer
  head_cond: add
  head_width: 96
  head_depth: 2
  head_heads: 4
  head_mlp_ratio: 2
  windows: [0.6, 0.85, 0.95]
  stage_weights: [1, 4, 16, 64]
flow:
  time_sampling: uniform
  class_dropout: 0.1
sample:
  sampler: heun
  stage_steps: [8, 6, 3, 3]
  cfg: 2.5            # the demo's: class accuracy 0.925 against 0.902 at the bench's 1.75 (FID 33.9 against 30.9; docs/demo.md)
  cfg_interval: [0.0, 0.7]
train:
  max_steps: 100000    # the wall-clock budget (ecar demo --minutes) ends the run first
  batch_size: 64
  lr: 3.0e-3           # a budget of minutes: 3e-3 beats 1e-3 and 2e-3 at 1,200 steps (FID 30.9 / 43.5 / 32.5; docs/demo.md)
  warmup_steps: 100
  schedule: cosine     # follows the time budget
  ema_decay: 0.995
  log_every: 25
  ckpt_every: 500
"""

DEFAULT_MINUTES = 5.0
DEFAULT_OUT = "ecar-demo"
"""Where ``ecar demo`` writes by default; ``ecar serve`` without ``--ckpt`` looks there."""


def demo_checkpoint(out: str | Path = DEFAULT_OUT) -> Path:
    """The checkpoint directory the demo writes into ``out``."""
    return Path(out) / "run"


DEMO_OUTPUTS = ("samples.png", "stages.png", "growing.gif", "metrics.json", "run")
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
    names = _class_names(cfg, k)
    labels = torch.arange(k).repeat_interleave(10)  # row i: ten samples of class i
    result = pipe.stages(labels=labels, seed=0, batch_size=len(labels))
    assert result.stages is not None
    save_png(class_rows(to_uint8(result.tensor), names, per_row=10), out / "samples.png")
    pick = torch.arange(k) * 10  # one sample of each class
    save_png(stages_strip([s[pick] for s in result.stages], max_rows=k), out / "stages.png")
    save_growing_gif([s[pick] for s in result.stages], out / "growing.gif")
    cost = measure_cost(pipe)  # the one timing protocol (ecar.eval.cost)
    metrics = {
        "model": pipe.name,
        "mode": pipe.method.name,
        "data": cfg.data.name,
        "params": pipe.params,
        "train_steps": summary["step"],
        "train_seconds": round(summary["train_seconds"], 1),
        "gflops_per_image": cost.gflops_per_image,
        "seconds_per_image": cost.seconds_per_image,
        "stage_steps": pipe.step_counts(),
        "cfg": pipe.sample.cfg,
    }
    metrics.update(_quality(pipe, fid_samples))
    metrics["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _class_names(cfg: Config, k: int) -> list[str]:
    """The dataset's class names (``0`` … ``k-1`` where it has none)."""
    try:
        names = list(build_dataset(cfg.data.name, split="heldout").class_names)
    except Exception:  # a dataset that cannot be opened here still gets its picture
        names = []
    return names if len(names) == k else [str(i) for i in range(k)]


def class_rows(images: np.ndarray, names: list[str], per_row: int, scale: int | None = None) -> np.ndarray:
    """(N, H, W, C) uint8, ``per_row`` images of each class in turn -> one picture with a row
    per class, its name on the left, every image enlarged ``scale`` times (nearest; default:
    to about 96 pixels) so a person sees what it is."""
    size, pad = images.shape[1], 2
    scale = scale or auto_scale(size, 96)
    grid = make_grid(images, nrow=per_row, pad=pad, scale=scale)
    picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert("RGB")
    cell = size * scale + pad
    margin = 8 * max(len(n) for n in names) + 16
    canvas = Image.new("RGB", (picture.width + margin, picture.height), "white")
    canvas.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    for i, name in enumerate(names[: grid.shape[0] // cell]):
        draw.text((6, i * cell + cell // 2 - 6), name, fill="black")
    return np.asarray(canvas)


def save_growing_gif(stages: list[torch.Tensor], path: Path, frame_ms: int = 600, hold_ms: int = 1800) -> Path:
    """An animated GIF of samples growing coarse to fine: one frame per stage (each stage at
    the final size, nearest upsampling keeps its tokens visible), the last frame held;
    ``stages``: per stage (N, C, h_s, w_s) in [-1, 1]."""
    size = stages[-1].shape[-1]
    scale = auto_scale(size, 96)
    frames = [make_grid(to_uint8(upsample(s.float(), size)), nrow=len(s), pad=2, scale=scale) for s in stages]
    pictures = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames]
    durations = [frame_ms] * (len(pictures) - 1) + [hold_ms]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return path


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


def _quality(pipe: Pipeline, n: int) -> dict:
    """FID against the held-out split (the default reference) and the class accuracy of the
    same ``n`` samples by the dataset's shipped classifier (:func:`ecar.eval.evaluate_model`)."""
    if n <= 0:
        return {}
    res = evaluate_model(pipe, n=n, metrics=("fid", "acc"), seed=0, progress=False)
    out = {"fid": res["fid"], "fid_samples": n, "fid_features": res["features"],
           "fid_reference_split": res["reference_split"]}
    if "acc" in res:
        out["class_accuracy"] = res["acc"]
    return out
