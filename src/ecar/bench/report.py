"""What ``ecar bench`` reports: equal-quality summary, Markdown table and frontier plot.

:func:`summarize` turns the bench rows into the headline numbers (see
:mod:`ecar.bench.pareto` for the frontier arithmetic):

* per model, its Pareto frontier in GFLOPs and in seconds (lists of row settings);
* per pair (method, other model), ``equal_quality_vs_<other>``: at the method's *shipped*
  setting, the other model's cost to reach the same mean FID along its frontier, divided
  by the method's cost — ``gflops_ratio`` and ``seconds_ratio`` (> 1: the method is
  cheaper at equal quality), each with a ``bound`` (``None`` interpolated, ``">"``/``"<"``
  when the other frontier never gets that good / is better even at its cheapest point);
* ``at_shipped_cost_vs_<other>``: the other model's frontier FID at the method's shipped
  GFLOPs, and a verdict: ``"method better"`` / ``"other better"`` when the difference
  exceeds one standard deviation of the difference (√(std_m² + std_o²), seed spread), else
  ``"tie"``; ``"other cannot sample this cheaply"`` when the cost lies below the other
  frontier's cheapest point.

Rows carry ``fid_mean``/``fid_std`` over sampling seeds; these are what the frontier uses.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from ecar.bench.pareto import Point, equal_quality_ratio, fid_at_cost, pareto_frontier

__all__ = ["bench_table_markdown", "headline_markdown", "plot_bench", "summarize"]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _points(rows: Sequence[dict], cost_key: str) -> list[Point]:
    return [Point(r[cost_key], r["fid_mean"], r["setting"]) for r in rows
            if _finite(r.get(cost_key)) and r[cost_key] > 0 and _finite(r.get("fid_mean"))]


def _std_at(rows: Sequence[dict], cost: float, cost_key: str) -> float:
    """Seed std of the frontier near ``cost``: the larger std of the two bracketing points."""
    front = pareto_frontier(_points(rows, cost_key))
    by = {r["setting"]: r for r in rows}
    stds = [by[p.label].get("fid_std") or 0.0 for p in front]
    if not front:
        return 0.0
    for a, b, sa, sb in zip(front, front[1:], stds, stds[1:]):
        if a.cost <= cost <= b.cost:
            return max(sa, sb)
    return stds[-1] if cost >= front[-1].cost else stds[0]


def summarize(rows: Sequence[dict]) -> dict:
    """Per model: frontiers and equal-quality comparisons with every other model."""
    names = list(dict.fromkeys(r["name"] for r in rows))
    by_name = {n: [r for r in rows if r["name"] == n] for n in names}
    out: dict[str, dict] = {}
    for name in names:
        mine = by_name[name]
        shipped = next((r for r in mine if r.get("setting") == "shipped"), None)
        entry: dict[str, Any] = {
            "frontier_gflops": [p.label for p in pareto_frontier(_points(mine, "gflops_per_image"))],
            "frontier_seconds": [p.label for p in pareto_frontier(_points(mine, "seconds_per_image"))],
        }
        if shipped is None or not _finite(shipped.get("fid_mean")):
            out[name] = entry
            continue
        entry["shipped"] = {k: shipped.get(k) for k in (
            "setting", "steps", "sampler", "fid_mean", "fid_std", "gflops_per_image", "seconds_per_image")}
        for other in names:
            if other == name:
                continue
            theirs = by_name[other]
            eq: dict[str, Any] = {}
            for key, cost_key in (("gflops", "gflops_per_image"), ("seconds", "seconds_per_image")):
                pts = _points(theirs, cost_key)
                if not pts or not _finite(shipped.get(cost_key)) or shipped[cost_key] <= 0:
                    eq[f"{key}_ratio"], eq[f"{key}_bound"] = None, None
                    continue
                r = equal_quality_ratio(Point(shipped[cost_key], shipped["fid_mean"]), pts)
                eq[f"{key}_ratio"], eq[f"{key}_bound"] = r.ratio, r.bound
                eq[f"{other}_{key}_at_equal_fid"] = r.baseline_cost
            eq["bound"] = eq.get("gflops_bound")
            eq["method_fid_mean"], eq["method_fid_std"] = shipped["fid_mean"], shipped.get("fid_std")
            entry[f"equal_quality_vs_{other}"] = eq

            g = shipped.get("gflops_per_image")
            pts = _points(theirs, "gflops_per_image")
            other_fid = fid_at_cost(pts, g) if pts and g is not None and _finite(g) else None
            cmp: dict[str, Any] = {"gflops": g, "method_fid_mean": shipped["fid_mean"],
                                   "method_fid_std": shipped.get("fid_std"), "other_fid": other_fid}
            if other_fid is None:
                cmp["verdict"] = "other cannot sample this cheaply"
            else:
                assert g is not None
                so = _std_at(theirs, g, "gflops_per_image")
                sd = math.hypot(shipped.get("fid_std") or 0.0, so)
                cmp["other_fid_std"], cmp["diff_std"] = so, sd
                diff = other_fid - shipped["fid_mean"]
                cmp["verdict"] = ("method better" if diff > sd else
                                  "other better" if -diff > sd else "tie")
            entry[f"at_shipped_cost_vs_{other}"] = cmp
        out[name] = entry
    return out


# --------------------------------------------------------------------------- text


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


def _fmt_fid(r: dict) -> str:
    m, s = r.get("fid_mean", r.get("fid")), r.get("fid_std")
    if not _finite(m):
        return "–"
    return f"{m:.2f} ± {s:.2f}" if _finite(s) else f"{m:.2f}"


def _fmt_ratio(ratio: Any, bound: Any) -> str:
    if not _finite(ratio):
        return "–"
    return f"{bound or ''}{ratio:.2f}×"


def bench_table_markdown(rows: Sequence[dict], summary: dict | None = None) -> str:
    """A Markdown table of bench rows (one line per model × sampler setting).

    Columns: model, mode, setting, sampler, integration steps (a list = steps per stage),
    parameters, training steps and minutes, FID mean ± std over seeds (lower is better),
    precision, recall, GFLOPs and milliseconds per image, and whether the row lies on the
    model's GFLOPs frontier (●).
    """
    summary = summary if summary is not None else summarize(rows)
    header = ["model", "mode", "setting", "sampler", "steps", "params", "train steps", "train min",
              "FID ↓ (mean ± std)", "precision ↑", "recall ↑", "GFLOPs/img", "ms/img", "frontier"]
    align = ["---"] * 5 + ["---:"] * 8 + [":---:"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for r in rows:
        ts = r.get("train_seconds")
        sec = r.get("seconds_per_image")
        front = summary.get(r["name"], {}).get("frontier_gflops", [])
        cells = [
            str(r.get("name", "")), str(r.get("mode", "")), str(r.get("setting", "")),
            str(r.get("sampler", "")), _fmt_steps(r.get("steps")), _fmt_params(r.get("params")),
            _fmt(r.get("train_steps")),
            _fmt(ts / 60.0 if isinstance(ts, (int, float)) else None, ".2f"),
            _fmt_fid(r), _fmt(r.get("precision"), ".3f"), _fmt(r.get("recall"), ".3f"),
            _fmt(r.get("gflops_per_image"), ".3g"),
            _fmt(sec * 1e3 if isinstance(sec, (int, float)) else None, ".3g"),
            "●" if r.get("setting") in front else "",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def headline_markdown(summary: dict) -> str:
    """Equal-quality cost ratios and the at-equal-cost verdicts, one line per model pair."""
    lines = ["| method (shipped) | FID (mean ± std) | vs | GFLOPs ratio at equal FID | "
             "seconds ratio at equal FID | other's FID at the method's GFLOPs | verdict |",
             "|---|---:|---|---:|---:|---:|---|"]
    for name, entry in summary.items():
        shipped = entry.get("shipped")
        if not shipped:
            continue
        for key, eq in entry.items():
            if not key.startswith("equal_quality_vs_"):
                continue
            other = key[len("equal_quality_vs_"):]
            cmp = entry.get(f"at_shipped_cost_vs_{other}", {})
            of = cmp.get("other_fid")
            lines.append(
                f"| {name} ({shipped['setting']}, {_fmt_steps(shipped['steps'])}) | "
                f"{_fmt_fid(shipped)} | {other} | "
                f"{_fmt_ratio(eq.get('gflops_ratio'), eq.get('gflops_bound'))} | "
                f"{_fmt_ratio(eq.get('seconds_ratio'), eq.get('seconds_bound'))} | "
                f"{_fmt(of, '.2f')} | {cmp.get('verdict', '–')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- picture


def plot_bench(rows: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """FID (mean ± std over seeds) against GFLOPs and against seconds per image (log x).

    One colour per model; every measured setting is a faint marker (circle Euler, square
    Heun, triangle other), the Pareto frontier a solid line with error bars, the shipped
    setting a star. Written with matplotlib's Agg canvas (no display), 1440×600 px.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(12, 5), dpi=120)
    FigureCanvasAgg(fig)
    names = list(dict.fromkeys(r["name"] for r in rows))
    features = sorted({str(r.get("features")) for r in rows if r.get("features")})
    splits = sorted({str(r.get("reference_split")) for r in rows if r.get("reference_split")})
    markers = {"euler": "o", "heun": "s"}
    for k, (cost_key, xlabel) in enumerate((("gflops_per_image", "GFLOPs per image"),
                                            ("seconds_per_image", "seconds per image"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for i, name in enumerate(names):
            color = f"C{i % 10}"
            mine = [r for r in rows if r["name"] == name and _finite(r.get(cost_key))
                    and r[cost_key] > 0 and _finite(r.get("fid_mean"))]
            if not mine:
                continue
            for r in mine:
                ax.scatter([r[cost_key]], [r["fid_mean"]], marker=markers.get(str(r.get("sampler")), "^"),
                           s=18, color=color, alpha=0.35, zorder=2)
            by = {r["setting"]: r for r in mine}
            front = [by[p.label] for p in pareto_frontier(_points(mine, cost_key))]
            ax.errorbar([r[cost_key] for r in front], [r["fid_mean"] for r in front],
                        yerr=[r.get("fid_std") or 0.0 for r in front], color=color, linewidth=1.8,
                        marker="o", markersize=4, capsize=3, zorder=3,
                        label=f"{name} ({mine[0].get('mode', '')})")
            for r in front:
                ax.annotate(_fmt_steps(r.get("steps")) + ("H" if r.get("sampler") == "heun" else ""),
                            (r[cost_key], r["fid_mean"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=6, color=color)
            if "shipped" in by:
                r = by["shipped"]
                ax.scatter([r[cost_key]], [r["fid_mean"]], marker="*", s=240, color=color,
                           edgecolors="black", linewidths=0.8, zorder=5)
        ax.set_xscale("log")
        ax.set_xlabel(f"sampling cost: {xlabel} (log scale)")
        ax.set_ylabel(f"FID ({', '.join(features) or 'feature'} features vs "
                      f"{'/'.join(splits) or 'reference'} split; lower is better)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], marker="*", linestyle="none", color="grey", markeredgecolor="black",
                           markersize=12),
                    Line2D([], [], marker="o", linestyle="none", color="grey", alpha=0.5),
                    Line2D([], [], marker="s", linestyle="none", color="grey", alpha=0.5)]
        labels += ["shipped sampler settings", "Euler setting", "Heun setting"]
        ax.legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle(title or "Sample quality vs sampling cost (lines: Pareto frontiers, ±1 std over seeds)",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- cost anatomy

_PART_COLORS = {"backbone": "C0", "head": "C1", "guidance": "C7"}


def _shipped_anatomies(rows: Sequence[dict]) -> list[tuple[str, dict]]:
    """(model name, anatomy) of each model's shipped row that carries one."""
    return [(r["name"], r["anatomy"]) for r in rows
            if r.get("setting") == "shipped" and isinstance(r.get("anatomy"), dict)]


def anatomy_markdown(rows: Sequence[dict]) -> str:
    """Where each model's GFLOPs per image go at its shipped setting: one line per unit
    (stage, or the whole image for one-unit methods) with its backbone, head and guidance
    GFLOPs (:func:`ecar.eval.cost.cost_anatomy`), and the parts' totals and shares."""
    found = _shipped_anatomies(rows)
    if not found:
        return ""
    lines = ["## Where the FLOPs go (shipped settings)\n",
             "GFLOPs per image by unit and part: **backbone** = the transformer (E-CAR's and "
             "FlowAR's AR pass, DiT's whole network), **head** = the per-token head's calls, "
             "**guidance** = what the null-label branch adds to both.\n",
             "| model | unit | backbone | head | guidance | total |", "|---|---|---:|---:|---:|---:|"]
    for name, a in found:
        units = a["units"]
        for i, u in enumerate(units):
            label = f"{i + 1} of {len(units)}" if len(units) > 1 else "all"
            lines.append(f"| {name} | {label} | {u['backbone']:.4f} | {u['head']:.4f} | "
                         f"{u['guidance']:.4f} | {sum(u.values()):.4f} |")
        parts, total = a["parts"], a["total"]
        shares = " | ".join(f"**{parts[p]:.4f}** ({parts[p] / total:.0%})" if total else "–"
                            for p in ("backbone", "head", "guidance"))
        lines.append(f"| {name} | **all** | {shares} | **{total:.4f}** |")
    return "\n".join(lines) + "\n"


def plot_anatomy(rows: Sequence[dict], path: str | Path) -> Path | None:
    """One stacked horizontal bar per model (shipped setting): GFLOPs per image, coloured by
    part (backbone, head, guidance), one segment per unit (lighter = later unit)."""
    found = _shipped_anatomies(rows)
    if not found:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    fig = Figure(figsize=(9, 2.0 + 0.6 * len(found)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for y, (name, a) in enumerate(found):
        left, n = 0.0, len(a["units"])
        for part in ("backbone", "head", "guidance"):
            for i, u in enumerate(a["units"]):
                w = u[part]
                if w <= 0:
                    continue
                ax.barh(y, w, left=left, color=_PART_COLORS[part], alpha=1.0 - 0.6 * i / max(1, n),
                        edgecolor="white", linewidth=0.5)
                if w > 0.06 * a["total"] and n > 1:
                    ax.text(left + w / 2, y, str(i + 1), ha="center", va="center", fontsize=7)
                left += w
        ax.text(left, y, f" {a['total']:.3g}", va="center", fontsize=8)
    ax.set_yticks(range(len(found)), [name for name, _ in found])
    ax.invert_yaxis()
    ax.set_xlabel("GFLOPs per image at the shipped setting (segment number = unit / stage)")
    ax.legend(handles=[Patch(color=c, label=p) for p, c in _PART_COLORS.items()], fontsize=8,
              loc="lower right")
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
