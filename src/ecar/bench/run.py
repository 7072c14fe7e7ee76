"""Side-by-side benchmark: same training budget, same metric, quality against sampling cost.

:func:`run_bench` trains every recipe for the same wall-clock budget (or takes existing
checkpoints), evaluates each model at its shipped sampler settings and along a sweep of
samplers and step counts, and writes ``bench.json``, ``bench.md`` and ``bench.png``.

Sweep
-----
One rule for every method: a sweep point is a sampler (``samplers``, default Euler and
Heun) and a **multiplier of the model's own shipped step counts** (``step_sweep``), applied
by the method (:meth:`ecar.methods.Method.scale_steps`): every count becomes
``max(1, round(f · shipped))``, so the recipe's allocation across units is kept.

* DiT (one unit): ``sample.steps`` is scaled.
* E-CAR / FlowAR mode: every stage's count is scaled (shipped = ``sample.stage_steps``, or
  ``sample.steps`` for every stage); [10, 8, 6] × (0.1, 0.2, 0.5, 2) gives [1, 1, 1],
  [2, 2, 1], [5, 4, 3], [20, 16, 12].

Rounding is half-up; points that round to the shipped setting or to an earlier point are
evaluated once. Guidance scale and schedule stay as shipped. A Heun step costs two
velocity evaluations (the last step of each integration one), which the measured cost
shows.

Rows and headline
-----------------
One row per (model, setting) with FID, precision and recall as mean and std over the
sampling ``seeds`` (``fid_mean``, ``fid_std``, ``fid_per_seed``…; ``fid`` = ``fid_mean``),
``seeds``, ``reference_split`` (the real split the FID compares with:
:func:`ecar.eval.evaluate.default_reference_split`), ``gflops_per_image`` and
``seconds_per_image`` (:func:`ecar.eval.cost.measure_cost`, one protocol for every model),
``params``, ``train_steps``, ``train_seconds``. The headline is not a ratio at shipped
step counts but the **equal-quality cost ratio** along each model's Pareto frontier
(:mod:`ecar.bench.report`, :mod:`ecar.bench.pareto`), stored per model in
``bench.json["methods"]``.

Stages
------
:func:`run_bench` plans and checks every job before anything is trained
(:func:`ecar.bench.jobs.plan_jobs`, the draft, the output folder), then per model: train or
load it (:func:`ecar.bench.jobs.prepare`), its reference statistics (:class:`_References`),
one row per setting (:func:`evaluate_setting`), speculative decoding with a draft
(:func:`speculative_entry`), and the reports after every model
(:func:`ecar.bench.outputs.write_outputs`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from ecar import __version__ as ECAR_VERSION
from ecar.bench.jobs import Model, plan_jobs, prepare, split_ckpt_spec, with_recipe_sampling
from ecar.bench.outputs import check_bench_out, device_name, load_previous, rebuild_command, write_outputs
from ecar.bench.report import bench_table_markdown, plot_bench
from ecar.bench.sweep import DEFAULT_SAMPLERS, DEFAULT_SEEDS, DEFAULT_SWEEP, sweep_settings
from ecar.device import pick_device
from ecar.eval.cost import measure_cost
from ecar.eval.evaluate import evaluate_seeds, fid_of_images
from ecar.eval.features import FeatureExtractor, default_feature_net, load_feature_net
from ecar.eval.reference import reference_stats
from ecar.pipeline import Pipeline, check_draft_pair, load

__all__ = ["DEFAULT_SAMPLERS", "DEFAULT_SEEDS", "DEFAULT_SWEEP", "bench_table_markdown", "evaluate_setting",
           "plot_bench", "run_bench", "speculative_entry", "split_ckpt_spec", "sweep_settings",
           "with_recipe_sampling"]

log = logging.getLogger("ecar.bench")


class _References:
    """Feature extractors and reference statistics, each made once per bench."""

    def __init__(self, features: str | None, reference_split: str | None, cache_dir: str | Path | None,
                 device: torch.device, progress: bool, say: Callable[[str], None]):
        self.features, self.split, self.cache_dir = features, reference_split, cache_dir
        self.device, self.progress, self.say = device, progress, say
        self.extractors: dict[str, FeatureExtractor] = {}
        self.stats: dict[tuple, dict] = {}

    def of(self, pipe: Pipeline, tag: str) -> tuple[str, FeatureExtractor, dict]:
        """(feature net name, extractor, reference statistics) for ``pipe``'s dataset."""
        cfg = pipe.cfg
        name = self.features or default_feature_net(cfg.data.name)
        if name not in self.extractors:
            self.extractors[name] = load_feature_net(name)
        extractor = self.extractors[name]
        key = (name, self.split, json.dumps(dataclasses.asdict(cfg.data), sort_keys=True, default=str))
        if key not in self.stats:
            ref = reference_stats(cfg, extractor, cache_dir=self.cache_dir, device=self.device,
                                  progress=self.progress, split=self.split)
            self.stats[key] = ref
            self.say(f"{tag}: reference statistics: {name} features of the {cfg.data.name} "
                     f"{ref['split']} split ({ref['n_images']} images)")
        return name, extractor, self.stats[key]


def evaluate_setting(model: Model, name: str, setting: dict, seeds: list[int], n_eval: int, batch_size: int,
                     extractor: FeatureExtractor, reference: dict, progress: bool,
                     cost_kw: dict[str, int]) -> dict:
    """One row of the bench: ``model`` at one sweep ``setting`` (:func:`sweep_settings`), FID,
    precision and recall over ``seeds``, and the cost of the setting (:func:`measure_cost`)."""
    pipe = model.pipe
    res = evaluate_seeds(pipe, seeds=seeds, n=n_eval, metrics=("fid", "is", "pr"), features=extractor,
                         batch_size=batch_size, sample=setting["sample"], progress=progress, reference=reference)
    cost = measure_cost(pipe, setting["sample"], anatomy=True, **cost_kw)
    assert cost.anatomy is not None
    return {
        "name": name, "family": res["family"], "mode": res["mode"], "model": pipe.name,
        "setting": setting["setting"], "step_scale": setting["scale"], "params": pipe.params,
        "train_steps": model.train_steps, "train_seconds": model.train_seconds,
        "steps": res["steps"], "total_steps": res["total_steps"],
        "sampler": res["sampler"], "cfg": res["cfg"],
        "fid": res.get("fid"), "fid_mean": res.get("fid_mean"), "fid_std": res.get("fid_std"),
        "fid_per_seed": res.get("fid_per_seed"), "seeds": seeds,
        "is": res.get("is"), "precision": res.get("precision"),
        "precision_std": res.get("precision_std"), "recall": res.get("recall"),
        "recall_std": res.get("recall_std"),
        "gflops_per_image": cost.gflops_per_image,
        "seconds_per_image": cost.seconds_per_image,
        "anatomy": cost.anatomy.as_dict(),
        "features": res["features"], "reference_split": res["reference_split"],
        "n_eval": n_eval, "ckpt": str(model.run),
    }


def speculative_entry(model: Model, draft: Pipeline, draft_path: str, setting: dict, seed: int, n_eval: int,
                      batch_size: int, extractor: FeatureExtractor, reference: dict) -> dict:
    """``model`` sampled by speculative decoding with ``draft`` at ``setting`` (the shipped one):
    its FID against ``reference``, seconds per image and the decoding's statistics."""
    out = model.pipe.with_draft(draft)(n_eval, seed=seed, sample=setting["sample"], batch_size=batch_size)
    st = out.speculative
    assert st is not None
    return {"draft": draft_path, "setting": setting["setting"], "seed": seed, "n": n_eval,
            "fid": fid_of_images(out.tensor, reference, extractor, model.pipe.device),
            "seconds_per_image": st["seconds"] / n_eval, **st}


def run_bench(
    configs: Sequence[str] | None = None,
    ckpts: Sequence[str] | None = None,
    train_minutes: float = 5.0,
    out: str | Path = "bench",
    overrides: Sequence[str] = (),
    n_eval: int = 1000,
    step_sweep: Sequence[float] = DEFAULT_SWEEP,
    device: str = "auto",
    progress: bool = True,
    features: str | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    cost_batch: int | None = None,
    cost_repeats: int | None = None,
    command: str | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    samplers: Sequence[str] = DEFAULT_SAMPLERS,
    reference_split: str | None = None,
    overwrite: bool = False,
    draft: str | None = None,
    previous: Sequence[str | Path] = (),
) -> list[dict]:
    """Train (or load) each model, evaluate it along a sampler × step sweep, write the report.

    Args:
        configs: recipe YAML paths. Each is loaded with ``overrides`` plus
            ``train.max_minutes=train_minutes`` (and ``train.device`` unless ``device`` is
            ``auto``) and trained into ``out/<recipe stem>/run``; the recipe's
            ``train.max_steps`` still caps the run.
        ckpts: existing checkpoint directories to evaluate as they are (after ``configs``);
            ``RUN=RECIPE.yaml`` evaluates RUN with the ``sample`` section of RECIPE (with
            ``overrides``), which must describe RUN's model and data
            (:func:`with_recipe_sampling`): a changed sampler is benched without retraining.
        train_minutes: wall-clock training budget per recipe (0 = max_steps only).
        out: output directory: ``bench.json`` (rows + metadata), ``bench.md``,
            ``bench.png`` and one run directory per recipe. Rewritten after every model, so
            an interrupted bench keeps what it finished.
        overrides: ``section.key=value`` overrides applied to every recipe.
        n_eval: generated samples per setting and seed for FID / precision / recall.
        step_sweep: multipliers of each model's shipped step counts (module docstring).
        seeds: sampling seeds; every metric is reported as mean and std over them.
        samplers: samplers of the sweep (the shipped setting keeps its own).
        reference_split: real split FID compares with (default: per dataset,
            :func:`ecar.eval.evaluate.default_reference_split`).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` for training and
            evaluation.
        features: feature network for every model (default: each dataset's default).
        cache_dir: reference-statistics cache (default ``$ECAR_CACHE/refstats``).
        batch_size: sampling block size for the evaluation.
        cost_batch, cost_repeats: override :func:`measure_cost`'s timing batch / repeats
            (default: its one protocol, the same for every model).
        command: the command line to record (default: rebuilt from the arguments).
        overwrite: replace the output of an earlier bench in ``out`` (:func:`check_bench_out`;
            without it, ``out`` must be new or empty).
        draft: a draft checkpoint for every model (a method that can be drafted; same method,
            data and token layout):
            each model is also sampled by speculative decoding at its shipped setting
            (``n_eval`` images, the first seed) and ``bench.json``'s ``speculative`` holds,
            per model, its FID, seconds per image and statistics (docs/speculative.md).
        previous: ``bench.json`` files (or their directories) of earlier benches whose rows
            are reported first, beside this bench's (:func:`load_previous`: the same budget,
            n_eval, seeds, reference split and machine, or a ValueError), so a new recipe can
            join a committed bench without retraining its models.

    Returns:
        The rows (also in ``bench.json``), ordered by model, shipped setting first.
    """
    configs, ckpts = list(configs or []), list(ckpts or [])
    if not configs and not ckpts:
        raise ValueError("run_bench needs at least one recipe (configs) or checkpoint (ckpts)")
    if n_eval < 4:
        raise ValueError(f"n_eval must be >= 4 (precision/recall use k=3 neighbours), got {n_eval}")
    if train_minutes < 0:
        raise ValueError("train_minutes must be >= 0 (0 = only train.max_steps limits training)")
    step_sweep = tuple(float(f) for f in step_sweep)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("run_bench needs at least one sampling seed")
    samplers = list(samplers)
    cost_kw = {k: v for k, v in (("batch", cost_batch), ("repeats", cost_repeats)) if v is not None}
    out = Path(out)
    dev = pick_device(device)
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        line = f"[bench {time.perf_counter() - t_start:6.1f}s] {msg}"
        if progress:
            tqdm.write(line, file=sys.stderr)
        else:
            log.info(line)

    # Fail early, before any training: recipes that do not load, a draft that does not fit, an --out in use.
    prev_rows, prev_records = load_previous(previous, train_minutes, n_eval, seeds, device_name(dev),
                                            reference_split)
    extra = [f"train.max_minutes={train_minutes}"] + ([f"train.device={device}"] if device != "auto" else [])
    jobs = plan_jobs(configs, ckpts, overrides, extra, {r["name"] for r in prev_rows})
    drafted = load(draft, dev) if draft else None
    for job in jobs:
        if drafted is not None and job.cfg is not None:
            check_draft_pair(job.cfg, drafted.cfg)
    check_bench_out(out, overwrite)

    meta: dict[str, Any] = {
        "command": command or rebuild_command(configs, ckpts, train_minutes, out, overrides,
                                              n_eval, step_sweep, device, seeds, samplers, previous),
        "args": {"configs": configs, "ckpts": ckpts, "train_minutes": train_minutes,
                 "out": str(out), "overrides": list(overrides), "n_eval": n_eval,
                 "step_sweep": list(step_sweep), "device": device, "features": features,
                 "batch_size": batch_size, "cost_batch": cost_batch, "cost_repeats": cost_repeats,
                 "seeds": seeds, "samplers": samplers, "reference_split": reference_split,
                 "draft": draft},
        "torch": torch.__version__,
        "ecar": ECAR_VERSION,
        "python": platform.python_version(),
        "device": device_name(dev),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "features": sorted({r["features"] for r in prev_rows if r.get("features")}),
    }
    if prev_records:
        meta["with"] = prev_records
    rows: list[dict] = list(prev_rows)
    references = _References(features, reference_split, cache_dir, dev, progress, say)
    for j, job in enumerate(jobs, 1):
        tag = f"{j}/{len(jobs)} {job.name}"
        model = prepare(job, out, dev, overwrite, progress, say, tag, train_minutes)
        feat_name, extractor, reference = references.of(model.pipe, tag)
        if feat_name not in meta["features"]:
            meta["features"].append(feat_name)
        settings = sweep_settings(model.pipe, step_sweep, samplers)
        for i, st in enumerate(settings, 1):
            say(f"{tag}: evaluating {st['setting']} ({i}/{len(settings)}): {n_eval} samples × "
                f"{len(seeds)} seeds, cost")
            row = evaluate_setting(model, job.name, st, seeds, n_eval, batch_size, extractor, reference, progress,
                                   cost_kw)
            rows.append(row)
            say(f"{tag}: {st['setting']}: FID {row['fid_mean']:.2f} ± {row['fid_std']:.2f}, "
                f"precision {row['precision']:.3f}, "
                f"recall {row['recall']:.3f}, {row['gflops_per_image']:.3g} GFLOPs/img, "
                f"{row['seconds_per_image'] * 1e3:.3g} ms/img")
        if drafted is not None and draft is not None:
            entry = speculative_entry(model, drafted, draft, settings[0], seeds[0], n_eval, batch_size, extractor,
                                      reference)
            meta.setdefault("speculative", {})[job.name] = entry
            say(f"{tag}: speculative with {draft}: acceptance rate {entry['acceptance_rate']:.3f}, "
                f"{entry['tokens_per_target_pass']:.2f} tokens per target pass, FID {entry['fid']:.2f}")
        write_outputs(out, rows, meta, plot=j == len(jobs))
    if len(meta["features"]) > 1:
        say(f"warning: the models were measured with different feature nets ({', '.join(meta['features'])}); "
            "their FIDs are not comparable across nets")
    say(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return rows
