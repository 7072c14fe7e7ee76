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
(:mod:`ecar.bench.report`, :mod:`ecar.eval.pareto`), stored per model in
``bench.json["methods"]``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from ecar import __version__ as ECAR_VERSION
from ecar import checkpoint as ckpt_mod
from ecar.bench.report import (anatomy_markdown, bench_table_markdown, headline_markdown, plot_anatomy, plot_bench,
                               summarize)
from ecar.build import load_for_inference
from ecar.config import Config, load_config
from ecar.device import pick_device
from ecar.eval.cost import measure_cost
from ecar.eval.evaluate import default_feature_net, evaluate_seeds, fid_of_images, reference_stats
from ecar.errors import OutputExistsError
from ecar.eval.features import load_feature_net
from ecar.generate import check_draft_pair, generate_images, labels_for
from ecar.methods import method_of
from ecar.samplers import SAMPLER_NAMES
from ecar.serialization import is_empty_dir
from ecar.train.trainer import train

__all__ = ["DEFAULT_SAMPLERS", "DEFAULT_SEEDS", "DEFAULT_SWEEP", "bench_table_markdown",
           "plot_bench", "run_bench", "split_ckpt_spec", "sweep_settings", "with_recipe_sampling"]

log = logging.getLogger("ecar.bench")

DEFAULT_SWEEP: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Multipliers of each model's shipped step counts (see the module docstring)."""
DEFAULT_SAMPLERS: tuple[str, ...] = ("euler", "heun")
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
BENCH_OUTPUTS = ("bench.json", "bench.json.tmp", "bench.md", "bench.png", "anatomy.png")
"""The reports :func:`run_bench` writes into ``out`` (beside one ``<name>/run`` per recipe)."""


def sweep_settings(model: torch.nn.Module, cfg: Config, step_sweep: Sequence[float],
                   samplers: Sequence[str] | None = None) -> list[dict]:
    """Sampler settings to evaluate: the shipped one first, then sampler × step multiplier.

    ``samplers`` defaults to the shipped sampler only. Returns a list of ``{"setting":
    "shipped" | "<sampler> steps=…", "scale": factor or None, "sample": the method's sample
    settings}`` with duplicates (after rounding) removed.
    """
    shipped = cfg.sample
    samplers = list(dict.fromkeys(samplers or [shipped.sampler]))
    for name in samplers:
        if name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLER_NAMES)}")
    method = method_of(cfg.model)

    def key(sampler: str, counts: int | list[int]) -> tuple:
        return (sampler, *counts) if isinstance(counts, list) else (sampler, counts)

    seen = {key(shipped.sampler, method.step_counts(model, shipped))}
    out = [{"setting": "shipped", "scale": None, "sample": dataclasses.replace(shipped)}]
    factors = sorted(float(v) for v in step_sweep)
    for f in factors:
        if not f > 0:
            raise ValueError(f"step_sweep factors must be > 0, got {f}")
    for name in samplers:
        for f in factors:
            sample = dataclasses.replace(method.scale_steps(model, shipped, f), sampler=name)
            counts = method.step_counts(model, sample)
            k = key(name, counts)
            if k in seen:
                continue
            seen.add(k)
            label = ",".join(str(c) for c in counts) if isinstance(counts, list) else str(counts)
            out.append({"setting": f"{name} steps={label}", "scale": f, "sample": sample})
    return out


def split_ckpt_spec(spec: str) -> tuple[str, str | None]:
    """``RUN`` or ``RUN=RECIPE.yaml`` (an entry of ``ckpts``) -> (run, recipe or None)."""
    run, sep, recipe = spec.rpartition("=")
    if sep and recipe.endswith((".yaml", ".yml")):
        if not Path(recipe).is_file():
            raise FileNotFoundError(f"recipe '{recipe}' of --ckpts entry '{spec}' does not exist")
        return run, recipe
    return spec, None


def with_recipe_sampling(cfg: Config, recipe: Config, run: str) -> Config:
    """``cfg`` (a trained run's) with the ``sample`` section of ``recipe``, the recipe it was
    trained from: a recipe whose sampler changed since is benched without retraining.

    Raises CheckpointError when the recipe's model or dataset is not the run's (its weights
    would not be the recipe's).
    """
    if type(recipe.model) is not type(cfg.model) or recipe.model != cfg.model:
        raise ckpt_mod.CheckpointError(
            f"the recipe given for '{run}' describes another model ({recipe.model}) than the run's "
            f"({cfg.model}): pair each run with the recipe it was trained from")
    if recipe.data.name != cfg.data.name:
        raise ckpt_mod.CheckpointError(
            f"the recipe given for '{run}' names data '{recipe.data.name}', the run trained on "
            f"'{cfg.data.name}'")
    return dataclasses.replace(cfg, sample=dataclasses.replace(recipe.sample))


def load_previous(paths: Sequence[str | Path], train_minutes: float, n_eval: int, seeds: Sequence[int],
                  device_name: str, reference_split: str | None) -> tuple[list[dict], list[dict]]:
    """Rows of earlier benches to report beside this one (``ecar bench --with``), and a record
    of each (path, command, date) for the metadata.

    A row is comparable only if it was measured the same way: the same training budget,
    samples per setting, sampling seeds, reference split and machine (``meta.device``, which
    names the device and its threads; time per image is only comparable on one machine).
    Anything else raises ValueError saying what differs.
    """
    rows: list[dict] = []
    records: list[dict] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "bench.json"
        try:
            doc = json.loads(path.read_text())
            meta, prev = doc["meta"], doc["rows"]
            a = meta["args"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--with {path}: not a bench.json written by ecar bench ({e})") from None
        want = {"train budget (--train-minutes)": (float(a["train_minutes"]), float(train_minutes)),
                "samples per setting (--n-eval)": (int(a["n_eval"]), int(n_eval)),
                "sampling seeds (--seeds)": (list(a["seeds"]), [int(v) for v in seeds]),
                "reference split (--reference-split)": (a.get("reference_split"), reference_split),
                "machine": (meta.get("device"), device_name)}
        differ = [f"{k}: {old!r} there, {new!r} here" for k, (old, new) in want.items() if old != new]
        if differ:
            raise ValueError(f"--with {path} was measured differently, so its rows cannot stand beside "
                             f"these ({'; '.join(differ)}). Rerun with its settings on its machine, or "
                             "bench all recipes together.")
        rows += [dict(r, bench=str(path)) for r in prev]
        records.append({"path": str(path), "command": meta.get("command"), "date": meta.get("date")})
    return rows, records


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _train_seconds_from_log(run: Path) -> float | None:
    """Last ``elapsed_s`` in a run's metrics.jsonl (for checkpoints given with ``ckpts``)."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        return None
    last = None
    for line in f.read_text().splitlines():
        try:
            last = json.loads(line).get("elapsed_s", last)
        except json.JSONDecodeError:
            continue
    return last


def _is_bench_output(out: Path) -> bool:
    """Whether every entry of ``out`` is a report or a ``<name>/run`` of an earlier bench, and
    there is evidence of one (a ``bench.json`` with its ``meta``, or a run)."""
    evidence = False
    for p in out.iterdir():
        if p.name in BENCH_OUTPUTS and p.is_file():
            if p.name == "bench.json":
                try:
                    evidence |= "meta" in json.loads(p.read_text())
                except (OSError, ValueError, TypeError):
                    return False
            continue
        if p.is_dir() and {q.name for q in p.iterdir()} <= {"run"}:
            if not (p / "run").exists():
                continue
            if ckpt_mod.is_run(p / "run"):
                evidence = True
                continue
        return False
    return evidence


def check_bench_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is not new or empty, unless it holds an earlier bench's output
    and ``overwrite`` is given (then its reports and the runs of this bench's recipes are
    replaced). A directory with anything else is someone else's: refused, flag or not."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' exists and is not a directory; choose another --out")
    if not out.is_dir() or is_empty_dir(out):
        return
    if not _is_bench_output(out):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise OutputExistsError(
            f"--out '{out}' holds files that are not an earlier bench's output ({shown}); "
            "choose a new or empty --out"
        )
    if not overwrite:
        raise OutputExistsError(
            f"--out '{out}' already holds the output of an earlier `ecar bench`; pass --overwrite "
            "to replace it (its reports, and the runs of the recipes trained again), evaluate "
            "its runs as they are with --ckpts, or choose another --out"
        )
    log.info("--overwrite: replacing the earlier bench output in %s", out)


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    taken.add(out)
    return out


def _write_outputs(out: Path, rows: list[dict], meta: dict, plot: bool = True) -> dict:
    """bench.json and bench.md (after every model), bench.png (when ``plot``)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "methods": summary, "rows": rows}, indent=2,
                              default=str) + "\n")
    os.replace(tmp, out / "bench.json")
    a = meta["args"]
    splits = sorted({str(r.get("reference_split")) for r in rows})
    head = (
        "# ecar bench\n\n"
        f"Command: `{meta['command']}`  \n"
        f"Date: {meta['date']} · device: {meta['device']} · torch {meta['torch']} · "
        f"ecar {meta['ecar']}  \n"
        f"Training budget: {a['train_minutes']} min per recipe (max_steps still caps) · "
        f"FID/precision/recall on {a['n_eval']} samples per seed, seeds {list(a['seeds'])}, "
        f"features: {', '.join(meta['features']) or '–'}, reference split: {', '.join(splits)} · "
        f"samplers {list(a['samplers'])} × step sweep ×{list(a['step_sweep'])} of each model's "
        "shipped steps.\n\n"
        "## Equal quality\n\n"
        "At each model's shipped setting: the other model's cost to reach the same mean FID "
        "along its Pareto frontier (interpolated in log cost; `>`/`<` = bound, never "
        "extrapolated) ÷ this model's cost, and the other model's frontier FID at this "
        "model's GFLOPs (verdict beyond one std of the difference).\n\n"
        + headline_markdown(summary) + "\n## Every setting\n\n"
    )
    (out / "bench.md").write_text(head + bench_table_markdown(rows, summary)
                                  + "\n![FID vs cost per image](bench.png)\n\n"
                                  + anatomy_markdown(rows)
                                  + ("\n![GFLOPs per image by stage and part](anatomy.png)\n" if plot else ""))
    if plot:
        plot_anatomy(rows, out / "anatomy.png")
        title = (f"FID vs sampling cost — {a['train_minutes']} min training each, "
                 f"n={a['n_eval']} samples × {len(a['seeds'])} seeds (±1 std)")
        plot_bench(rows, out / "bench.png", title=title)
    return summary


# --------------------------------------------------------------------------- main


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
        draft: a draft checkpoint for every model (same method, data and token layout):
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


    prev_rows, prev_records = load_previous(previous, train_minutes, n_eval, seeds, _device_name(dev),
                                            reference_split)
    jobs: list[tuple[str, str, str]] = []  # (kind, source, name)
    taken: set[str] = {r["name"] for r in prev_rows}
    for c in configs:
        jobs.append(("config", c, _unique(Path(c).stem, taken)))
    recipes: dict[str, Config] = {}  # ckpt job name -> the recipe whose sampling it is evaluated with
    for spec in ckpts:
        c, recipe = split_ckpt_spec(spec)
        p = Path(c).resolve()
        if p.parent.name == ckpt_mod.CHECKPOINTS_DIR:  # one checkpoint of a run: named by the run
            p = p.parent.parent
        stem = p.parent.name if p.name == "run" else p.name
        jobs.append(("ckpt", c, _unique(stem, taken)))
        if recipe is not None:
            recipes[jobs[-1][2]] = load_config(recipe, list(overrides))
    # Fail early, before any training, on recipes that do not load or an --out in use.
    extra = [f"train.max_minutes={train_minutes}"] + ([f"train.device={device}"] if device != "auto" else [])
    loaded_cfgs: dict[str, Config] = {}
    for kind, src, name in jobs:
        if kind == "config":
            loaded_cfgs[name] = load_config(src, list(overrides) + extra)
        elif not Path(src).is_dir():
            raise ckpt_mod.CheckpointError(f"checkpoint directory '{src}' does not exist")
    drafted = load_for_inference(draft, dev) if draft else None
    for name, cfg in loaded_cfgs.items():
        if drafted is not None:
            check_draft_pair(cfg, drafted.cfg)
    check_bench_out(out, overwrite)

    meta = {
        "command": command or _rebuild_command(configs, ckpts, train_minutes, out, overrides,
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
        "device": _device_name(dev),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "features": sorted({r["features"] for r in prev_rows if r.get("features")}),
    }
    if prev_records:
        meta["with"] = prev_records
    rows: list[dict] = list(prev_rows)
    extractors: dict[str, Any] = {}
    references: dict[tuple, dict] = {}
    for j, (kind, src, name) in enumerate(jobs, 1):
        tag = f"{j}/{len(jobs)} {name}"
        if kind == "config":
            cfg = loaded_cfgs[name]
            run = out / name / "run"
            say(f"{tag}: training {cfg.model.name} for up to {train_minutes} min "
                f"(max {cfg.train.max_steps} steps) into {run}")
            summary = train(cfg, run, progress=progress, overwrite=overwrite and ckpt_mod.is_run(run))
            train_steps, train_seconds = summary["step"], summary["train_seconds"]
            say(f"{tag}: trained {train_steps} steps in {train_seconds:.1f} s")
        else:
            run = Path(src)
            train_steps, train_seconds = None, _train_seconds_from_log(run)
        loaded = load_for_inference(str(run), dev)
        if train_steps is None:
            train_steps = loaded.step
        model, lcfg = loaded.model, loaded.cfg
        if name in recipes:
            lcfg = with_recipe_sampling(lcfg, recipes[name], str(run))
        params = sum(p.numel() for p in model.parameters())
        feat_name = features or default_feature_net(lcfg.data.name)
        if feat_name not in extractors:
            extractors[feat_name] = load_feature_net(feat_name)
        extractor = extractors[feat_name]
        if feat_name not in meta["features"]:
            meta["features"].append(feat_name)
        data_key = (feat_name, reference_split,
                    json.dumps(dataclasses.asdict(lcfg.data), sort_keys=True, default=str))
        if data_key not in references:
            references[data_key] = reference_stats(lcfg, extractor, cache_dir=cache_dir, device=dev,
                                                   progress=progress, split=reference_split)
            say(f"{tag}: reference statistics: {feat_name} features of the {lcfg.data.name} "
                f"{references[data_key]['split']} split ({references[data_key]['n_images']} images)")
        reference = references[data_key]
        settings = sweep_settings(model, lcfg, step_sweep, samplers)
        for i, st in enumerate(settings, 1):
            say(f"{tag}: evaluating {st['setting']} ({i}/{len(settings)}): {n_eval} samples × "
                f"{len(seeds)} seeds, cost")
            res = evaluate_seeds(model, lcfg, loaded.autoencoder, seeds=seeds, n=n_eval,
                                 metrics=("fid", "is", "pr"), features=extractor,
                                 batch_size=batch_size, sample=st["sample"], progress=progress,
                                 reference=reference)
            cost = measure_cost(model, lcfg, st["sample"], anatomy=True, **cost_kw)
            row = {
                "name": name, "family": res["family"], "mode": res["mode"], "model": lcfg.model.name,
                "setting": st["setting"], "step_scale": st["scale"], "params": params,
                "train_steps": train_steps, "train_seconds": train_seconds,
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
                "n_eval": n_eval, "ckpt": str(run),
            }
            rows.append(row)
            say(f"{tag}: {st['setting']}: FID {row['fid_mean']:.2f} ± {row['fid_std']:.2f}, "
                f"precision {row['precision']:.3f}, "
                f"recall {row['recall']:.3f}, {row['gflops_per_image']:.3g} GFLOPs/img, "
                f"{row['seconds_per_image'] * 1e3:.3g} ms/img")
        if drafted is not None:
            check_draft_pair(lcfg, drafted.cfg)
            spec = generate_images(model, lcfg, loaded.autoencoder, labels_for(n_eval, loaded.num_classes),
                                   settings[0]["sample"], seed=seeds[0], batch_size=batch_size,
                                   draft=drafted.model)
            st = spec["speculative"]
            meta.setdefault("speculative", {})[name] = {
                "draft": draft, "setting": settings[0]["setting"], "seed": seeds[0], "n": n_eval,
                "fid": fid_of_images(spec["images"], reference, extractor, dev),
                "seconds_per_image": st["seconds"] / n_eval, **st}
            say(f"{tag}: speculative with {draft}: acceptance rate {st['acceptance_rate']:.3f}, "
                f"{st['tokens_per_target_pass']:.2f} tokens per target pass, "
                f"FID {meta['speculative'][name]['fid']:.2f}")
        _write_outputs(out, rows, meta, plot=j == len(jobs))
    if len(meta["features"]) > 1:
        say(f"warning: the models were measured with different feature nets ({', '.join(meta['features'])}); "
            "their FIDs are not comparable across nets")
    say(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return rows


def _rebuild_command(configs, ckpts, train_minutes, out, overrides, n_eval, step_sweep, device,
                     seeds, samplers, previous=()) -> str:
    parts = ["ecar", "bench"]
    if configs:
        parts += ["--configs", *configs]
    if ckpts:
        parts += ["--ckpts", *ckpts]
    parts += ["--train-minutes", f"{train_minutes:g}", "--n-eval", str(n_eval),
              "--sweep", ",".join(f"{f:g}" for f in step_sweep),
              "--seeds", ",".join(str(s) for s in seeds), "--samplers", ",".join(samplers),
              "--out", str(out)]
    if device != "auto":
        parts += ["--device", device]
    if previous:
        parts += ["--with", *(str(p) for p in previous)]
    parts += list(overrides)
    return shlex.join(parts)
