"""Side-by-side benchmark: same training budget, same metric, quality vs sampling cost.

:func:`run_bench` trains every recipe for the same wall-clock budget (or takes existing
checkpoints), then evaluates each model at its shipped sampler settings and along a sweep
of step counts, and writes ``bench.json``, ``bench.md`` and ``bench.png`` (FID vs GFLOPs per
image).

Step sweep design
-----------------
One rule for every family: a sweep point is a **multiplier of the model's own shipped
step counts** (``step_sweep``, default ``(0.1, 0.2, 0.5, 1, 2)``).

* DiT (one unit): ``sample.steps = max(1, round(f · shipped steps))``; with the shipped 50
  steps the default sweep gives 5, 10, 25, 50, 100 steps.
* E-CAR / FlowAR (family ``ecar``): every stage's count is scaled,
  ``stage_steps[s] = max(1, round(f · shipped[s]))`` (shipped = ``sample.stage_steps``, or
  ``sample.steps`` for every stage), so the recipe's allocation across stages (more steps
  on coarse stages, say) is kept; [10, 8, 6] gives [1, 1, 1], [2, 2, 1], [5, 4, 3],
  [10, 8, 6], [20, 16, 12].

Scaling relative to the shipped settings treats every recipe alike (each recipe ships
what its authors consider a good quality/cost point) and puts each curve around its
shipped point. Rounding is half-up; points that round to the shipped settings or to an
earlier point are evaluated once (the shipped row stands for the factor 1). Everything
else in ``cfg.sample`` (sampler, guidance scale and schedule) stays as shipped.

Rows and ratios
---------------
One row per (model, setting) with ``fid``, ``precision``, ``recall`` (``n_eval`` samples,
seed 0, the dataset's default feature network), ``gflops_per_image`` and
``seconds_per_image`` (:func:`ecar.eval.cost.measure_cost`: FLOPs of one full sampling
call, guidance included, decoding excluded; median time of batched calls), ``params``,
``train_steps``, ``train_seconds``. Ratios compare with the first model's *shipped* row:
``fid_ratio = fid / fid_base`` (below 1 = better), ``gflops_ratio = gflops_base /
gflops`` ("× fewer FLOPs": above 1 = cheaper), ``time_ratio = seconds_base / seconds``
(speed-up: above 1 = faster).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from ecar.config import Config

__all__ = ["DEFAULT_SWEEP", "bench_table_markdown", "plot_bench", "run_bench", "sweep_settings"]

log = logging.getLogger("ecar.bench")

DEFAULT_SWEEP: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Multipliers of each model's shipped step counts (see the module docstring)."""


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def sweep_settings(model: torch.nn.Module, cfg: Config, step_sweep: Sequence[float]) -> list[dict]:
    """Sampler settings to evaluate: the shipped one first, then the sweep.

    Returns a list of ``{"setting": "shipped" | "steps=…", "scale": factor or None,
    "sample": SampleConfig}`` with duplicates (after rounding) removed.
    """
    from ecar.models.registry import family_of

    shipped = cfg.sample
    fam = family_of(cfg.model)
    multistage = fam.name != "dit" and hasattr(model, "num_stages")
    if multistage:
        from ecar.engine.multistage import stage_step_counts

        base = stage_step_counts(shipped, model.num_stages)
        seen = {tuple(base)}
    else:
        base = shipped.steps
        seen = {(base,)}
    out = [{"setting": "shipped", "scale": None, "sample": dataclasses.replace(shipped)}]
    for f in sorted(float(v) for v in step_sweep):
        if not f > 0:
            raise ValueError(f"step_sweep factors must be > 0, got {f}")
        if multistage:
            steps = [max(1, _round_half_up(k * f)) for k in base]
            key = tuple(steps)
            sample = dataclasses.replace(shipped, stage_steps=steps)
            label = "steps=" + ",".join(str(k) for k in steps)
        else:
            steps = max(1, _round_half_up(base * f))
            key = (steps,)
            sample = dataclasses.replace(shipped, steps=steps)
            label = f"steps={steps}"
        if key in seen:
            continue
        seen.add(key)
        out.append({"setting": label, "scale": f, "sample": sample})
    return out


# --------------------------------------------------------------------------- formatting


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _fmt_params(p: Any) -> str:
    if not isinstance(p, (int, float)):
        return "–"
    return f"{p / 1e6:.2f} M" if p >= 1e5 else f"{p / 1e3:.1f} k"


def _fmt_steps(steps: Any) -> str:
    if isinstance(steps, (list, tuple)):
        return "[" + ", ".join(str(s) for s in steps) + "]"
    return _fmt(steps)


def bench_table_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table of bench rows (one line per model × sampler setting).

    Columns: model, mode, setting, integration steps (a list = steps per stage), parameters,
    training steps and minutes, FID (lower is better), precision, recall, GFLOPs and
    milliseconds per image, and the ratios to the first model's shipped row: FID ratio,
    "× fewer GFLOPs" and speed-up.
    """
    header = ["model", "mode", "setting", "steps", "params", "train steps", "train min",
              "FID ↓", "precision ↑", "recall ↑", "GFLOPs/img", "ms/img",
              "FID ÷ base", "× fewer GFLOPs", "speed-up"]
    align = ["---", "---", "---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:",
             "---:", "---:", "---:", "---:"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        ts = r.get("train_seconds")
        sec = r.get("seconds_per_image")
        cells = [
            str(r.get("name", "")), str(r.get("mode", "")), str(r.get("setting", "")),
            _fmt_steps(r.get("steps")), _fmt_params(r.get("params")), _fmt(r.get("train_steps")),
            _fmt(ts / 60.0 if isinstance(ts, (int, float)) else None, ".2f"),
            _fmt(r.get("fid"), ".2f"), _fmt(r.get("precision"), ".3f"), _fmt(r.get("recall"), ".3f"),
            _fmt(r.get("gflops_per_image"), ".3g"),
            _fmt(sec * 1e3 if isinstance(sec, (int, float)) else None, ".3g"),
            _fmt(r.get("fid_ratio"), ".2f"), _fmt(r.get("gflops_ratio"), ".2f"),
            _fmt(r.get("time_ratio"), ".2f"),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_bench(rows: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """FID (y) vs GFLOPs per image (x, log scale): one curve per model, shipped point starred.

    Written with matplotlib's Agg canvas (no display needed), 960×600 px.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names = list(dict.fromkeys(r["name"] for r in rows))
    colors = [f"C{i % 10}" for i in range(len(names))]
    features = sorted({str(r.get("features")) for r in rows if r.get("features")})
    for name, color in zip(names, colors):
        pts = [r for r in rows if r["name"] == name and _finite(r.get("fid"))
               and _finite(r.get("gflops_per_image")) and r["gflops_per_image"] > 0]
        if not pts:
            continue
        pts.sort(key=lambda r: r["gflops_per_image"])
        mode = pts[0].get("mode", "")
        ax.plot([r["gflops_per_image"] for r in pts], [r["fid"] for r in pts], "-o", color=color,
                markersize=5, linewidth=1.6, label=f"{name} ({mode})")
        for r in pts:
            ax.annotate(_fmt_steps(r.get("steps")), (r["gflops_per_image"], r["fid"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
            if r.get("setting") == "shipped":
                ax.scatter([r["gflops_per_image"]], [r["fid"]], marker="*", s=260, color=color,
                           edgecolors="black", linewidths=0.8, zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("sampling cost: GFLOPs per image (log scale)")
    ax.set_ylabel(f"FID ({', '.join(features) or 'feature'} features; lower is better)")
    ax.set_title(title or "Sample quality vs sampling cost")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="*", linestyle="none", color="grey",
                          markeredgecolor="black", markersize=13))
    labels.append("shipped sampler settings")
    ax.legend(handles, labels, fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _add_ratios(rows: list[dict]) -> None:
    base = next((r for r in rows if r.get("setting") == "shipped"), None)
    for r in rows:
        def ratio(num, den):
            return num / den if _finite(num) and _finite(den) and den > 0 else None

        if base is None:
            r["fid_ratio"] = r["gflops_ratio"] = r["time_ratio"] = None
            continue
        r["fid_ratio"] = ratio(r.get("fid"), base.get("fid"))
        r["gflops_ratio"] = ratio(base.get("gflops_per_image"), r.get("gflops_per_image"))
        r["time_ratio"] = ratio(base.get("seconds_per_image"), r.get("seconds_per_image"))


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


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    taken.add(out)
    return out


def _write_outputs(out: Path, rows: list[dict], meta: dict, plot: bool = True) -> None:
    """bench.json and bench.md (after every model), bench.png (when ``plot``)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    os.replace(tmp, out / "bench.json")
    a = meta["args"]
    head = (
        "# ecar bench\n\n"
        f"Command: `{meta['command']}`  \n"
        f"Date: {meta['date']} · device: {meta['device']} · torch {meta['torch']} · "
        f"ecar {meta['ecar']}  \n"
        f"Training budget: {a['train_minutes']} min per recipe (max_steps still caps) · "
        f"FID/precision/recall on {a['n_eval']} samples, seed 0, "
        f"features: {', '.join(meta['features']) or '–'} · step sweep ×{list(a['step_sweep'])} "
        "of each model's shipped steps.  \n"
        "Ratios compare with the first model's shipped row: FID ÷ base (< 1 better), "
        "× fewer GFLOPs (> 1 cheaper), speed-up (> 1 faster).\n\n"
    )
    (out / "bench.md").write_text(head + bench_table_markdown(rows)
                                  + "\n![FID vs GFLOPs per image](bench.png)\n")
    if not plot:
        return
    title = (f"FID vs sampling cost — {a['train_minutes']} min training each, "
             f"n={a['n_eval']} samples")
    plot_bench(rows, out / "bench.png", title=title)


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
    cost_batch: int = 64,
    cost_repeats: int = 5,
    command: str | None = None,
) -> list[dict]:
    """Train (or load) each model, evaluate it along a step sweep, write the report.

    Args:
        configs: recipe YAML paths. Each is loaded with ``overrides`` plus
            ``train.max_minutes=train_minutes`` (and ``train.device`` unless ``device`` is
            ``auto``) and trained into ``out/<recipe stem>/run``; the recipe's
            ``train.max_steps`` still caps the run.
        ckpts: existing checkpoint directories to evaluate as they are (after ``configs``).
        train_minutes: wall-clock training budget per recipe (0 = max_steps only).
        out: output directory: ``bench.json`` (rows + metadata), ``bench.md``,
            ``bench.png`` and one run directory per recipe. Rewritten after every model, so
            an interrupted bench keeps what it finished.
        overrides: ``section.key=value`` overrides applied to every recipe.
        n_eval: generated samples per setting for FID / precision / recall (seed 0).
        step_sweep: multipliers of each model's shipped step counts (module docstring).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` for training and
            evaluation.
        features: feature network for every model (default: each dataset's default).
        cache_dir: reference-statistics cache (default ``$ECAR_CACHE/refstats``).
        batch_size: sampling block size for the evaluation.
        cost_batch, cost_repeats: batch and timed repeats of :func:`measure_cost`.
        command: the command line to record (default: rebuilt from the arguments).

    Returns:
        The rows (also in ``bench.json``), ordered by model, shipped setting first.
    """
    from ecar.build import load_for_inference
    from ecar.config import load_config
    from ecar.eval.cost import measure_cost
    from ecar.eval.evaluate import default_feature_net, evaluate_model, reference_stats
    from ecar.eval.features import load_feature_net
    from ecar.models.registry import family_of
    from ecar.train import checkpoint as ckpt_mod
    from ecar.train.distributed import pick_device
    from ecar.train.trainer import train

    configs, ckpts = list(configs or []), list(ckpts or [])
    if not configs and not ckpts:
        raise ValueError("run_bench needs at least one recipe (configs) or checkpoint (ckpts)")
    if n_eval < 4:
        raise ValueError(f"n_eval must be >= 4 (precision/recall use k=3 neighbours), got {n_eval}")
    if train_minutes < 0:
        raise ValueError("train_minutes must be >= 0 (0 = only train.max_steps limits training)")
    step_sweep = tuple(float(f) for f in step_sweep)
    out = Path(out)
    dev = pick_device(device)
    t_start = time.perf_counter()

    def say(msg: str) -> None:
        line = f"[bench {time.perf_counter() - t_start:6.1f}s] {msg}"
        if progress:
            tqdm.write(line, file=sys.stderr)
        else:
            log.info(line)


    jobs: list[tuple[str, str, str]] = []  # (kind, source, name)
    taken: set[str] = set()
    for c in configs:
        jobs.append(("config", c, _unique(Path(c).stem, taken)))
    for c in ckpts:
        p = Path(c).resolve()
        stem = p.parent.name if p.name == "run" else p.name
        jobs.append(("ckpt", c, _unique(stem, taken)))
    # Fail early, before any training, on recipes that do not load or runs already there.
    extra = [f"train.max_minutes={train_minutes}"] + ([f"train.device={device}"] if device != "auto" else [])
    loaded_cfgs: dict[str, Config] = {}
    for kind, src, name in jobs:
        if kind == "config":
            loaded_cfgs[name] = load_config(src, list(overrides) + extra)
            run = out / name / "run"
            if ckpt_mod.has_checkpoint(run):
                raise ckpt_mod.CheckpointError(
                    f"{run} already holds a checkpoint from an earlier bench; choose another "
                    f"--out, delete it, or evaluate it as it is with --ckpts {run}"
                )
        elif not Path(src).is_dir():
            raise ckpt_mod.CheckpointError(f"checkpoint directory '{src}' does not exist")

    meta = {
        "command": command or _rebuild_command(configs, ckpts, train_minutes, out, overrides,
                                               n_eval, step_sweep, device),
        "args": {"configs": configs, "ckpts": ckpts, "train_minutes": train_minutes,
                 "out": str(out), "overrides": list(overrides), "n_eval": n_eval,
                 "step_sweep": list(step_sweep), "device": device, "features": features,
                 "batch_size": batch_size, "cost_batch": cost_batch, "cost_repeats": cost_repeats,
                 "seed": 0},
        "torch": torch.__version__,
        "ecar": _ecar_version(),
        "python": platform.python_version(),
        "device": _device_name(dev),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "features": [],
    }
    rows: list[dict] = []
    extractors: dict[str, Any] = {}
    references: dict[tuple, dict] = {}
    for j, (kind, src, name) in enumerate(jobs, 1):
        tag = f"{j}/{len(jobs)} {name}"
        if kind == "config":
            cfg = loaded_cfgs[name]
            run = out / name / "run"
            say(f"{tag}: training {cfg.model.name} for up to {train_minutes} min "
                f"(max {cfg.train.max_steps} steps) into {run}")
            summary = train(cfg, run, progress=progress)
            train_steps, train_seconds = summary["step"], summary["train_seconds"]
            say(f"{tag}: trained {train_steps} steps in {train_seconds:.1f} s")
        else:
            run = Path(src)
            train_steps, train_seconds = None, _train_seconds_from_log(run)
        loaded = load_for_inference(str(run), dev)
        if train_steps is None:
            train_steps = loaded.step
        model, lcfg = loaded.model, loaded.cfg
        fam = family_of(lcfg.model)
        mode = getattr(lcfg.model, "mode", fam.name)
        params = sum(p.numel() for p in model.parameters())
        feat_name = features or default_feature_net(lcfg.data.name)
        if feat_name not in extractors:
            extractors[feat_name] = load_feature_net(feat_name)
        extractor = extractors[feat_name]
        if feat_name not in meta["features"]:
            meta["features"].append(feat_name)
        data_key = (feat_name, json.dumps(dataclasses.asdict(lcfg.data), sort_keys=True, default=str))
        if data_key not in references:
            say(f"{tag}: reference statistics ({feat_name} features of the {lcfg.data.name} train split)")
            references[data_key] = reference_stats(lcfg, extractor, cache_dir=cache_dir, device=dev,
                                                   progress=progress)
        reference = references[data_key]
        settings = sweep_settings(model, lcfg, step_sweep)
        for i, st in enumerate(settings, 1):
            say(f"{tag}: evaluating {st['setting']} ({i}/{len(settings)}): {n_eval} samples, cost")
            res = evaluate_model(model, lcfg, loaded.autoencoder, n=n_eval, metrics=("fid", "is", "pr"),
                                 features=extractor, seed=0, batch_size=batch_size,
                                 sample=st["sample"], progress=progress, reference=reference)
            cost = measure_cost(model, lcfg, st["sample"], batch=cost_batch, repeats=cost_repeats)
            row = {
                "name": name, "family": fam.name, "mode": mode, "model": lcfg.model.name,
                "setting": st["setting"], "step_scale": st["scale"], "params": params,
                "train_steps": train_steps, "train_seconds": train_seconds,
                "steps": res["steps"], "total_steps": res["total_steps"],
                "sampler": res["sampler"], "cfg": res["cfg"],
                "fid": res.get("fid"), "is": res.get("is"),
                "precision": res.get("precision"), "recall": res.get("recall"),
                "gflops_per_image": cost.gflops_per_image,
                "seconds_per_image": cost.seconds_per_image,
                "features": res["features"], "n_eval": n_eval, "ckpt": str(run),
            }
            rows.append(row)
            say(f"{tag}: {st['setting']}: FID {row['fid']:.2f}, precision {row['precision']:.3f}, "
                f"recall {row['recall']:.3f}, {row['gflops_per_image']:.3g} GFLOPs/img, "
                f"{row['seconds_per_image'] * 1e3:.3g} ms/img")
        _add_ratios(rows)
        _write_outputs(out, rows, meta, plot=j == len(jobs))
    if len(meta["features"]) > 1:
        say(f"warning: the models were measured with different feature nets ({', '.join(meta['features'])}); "
            "their FIDs (and fid_ratio) are not comparable across nets")
    say(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return rows


def _ecar_version() -> str:
    try:
        import ecar

        return ecar.__version__
    except Exception:  # noqa: BLE001
        return "unknown"


def _rebuild_command(configs, ckpts, train_minutes, out, overrides, n_eval, step_sweep, device) -> str:
    import shlex

    parts = ["ecar", "bench"]
    if configs:
        parts += ["--configs", *configs]
    if ckpts:
        parts += ["--ckpts", *ckpts]
    parts += ["--train-minutes", f"{train_minutes:g}", "--n-eval", str(n_eval),
              "--sweep", ",".join(f"{f:g}" for f in step_sweep), "--out", str(out)]
    if device != "auto":
        parts += ["--device", device]
    parts += list(overrides)
    return shlex.join(parts)
