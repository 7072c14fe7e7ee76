#!/usr/bin/env python
"""E-CAR's equal-quality lead against training compute (issue 25, point 5): the ratios that
``ecar bench`` reports at each training budget, in one JSON and one plot.

    python benchmarks/ratio_vs_budget.py --bench 15=benchmarks/results/fashion_bench/bench.json \\
        --bench 60=benchmarks/results/fashion_bench_60min/bench.json \\
        --out benchmarks/results/ratio_vs_budget

For every budget (minutes of training per recipe) and every other method of the bench: the
equal-quality ratio of ``--method`` at its shipped setting (the other's GFLOPs and seconds at
the same FID along its frontier, divided by ``--method``'s; '>' where the other's frontier never
reaches that FID), both shipped FIDs and the best FID on each frontier (mean ± std over the
bench's seeds), and the training steps. Writes OUT.json and OUT.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def best_fid(rows: list[dict], name: str) -> dict:
    mine = [r for r in rows if r["name"] == name]
    best = min(mine, key=lambda r: r["fid_mean"])
    return {"setting": best["setting"], "sampler": best["sampler"], "steps": best["steps"],
            "fid_mean": best["fid_mean"], "fid_std": best["fid_std"], "gflops_per_image": best["gflops_per_image"]}


def summarise(budget: float, path: Path, method: str) -> dict:
    bench = json.loads(path.read_text())
    methods, rows = bench["methods"], bench["rows"]
    if method not in methods:
        raise SystemExit(f"error: {path} has no method {method!r} (it has {', '.join(methods)})")
    steps = {r["name"]: r.get("train_steps") for r in rows}
    out = {"minutes": budget, "bench": str(path), "command": bench["meta"].get("command"),
           "seeds": bench["meta"].get("args", {}).get("seeds"), "train_steps": steps,
           "shipped": {n: m["shipped"] for n, m in methods.items()},
           "best": {n: best_fid(rows, n) for n in methods}, "ratios": {}}
    for key, eq in methods[method].items():
        if key.startswith("equal_quality_vs_"):
            other = key.removeprefix("equal_quality_vs_")
            out["ratios"][other] = {"gflops": eq["gflops_ratio"], "gflops_bound": eq["gflops_bound"],
                                    "seconds": eq["seconds_ratio"], "seconds_bound": eq["seconds_bound"]}
    return out


def _minutes_axis(ax, points: list[dict]) -> None:
    """The shared x axis of every panel: the budgets, on a log scale."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks([p["minutes"] for p in points], [f"{p['minutes']:g}" for p in points])
    ax.set_xlabel("training minutes per recipe")


def plot(points: list[dict], method: str, path: Path) -> None:
    others = sorted({o for p in points for o in p["ratios"]})
    names = sorted({n for p in points for n in p["best"]} | set(others))
    colour = {n: f"C{i}" for i, n in enumerate(names)}  # one colour per method in every panel
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.6))
    for ax, unit in zip(axes[:2], ("gflops", "seconds")):
        for other in others:
            xs = [p["minutes"] for p in points if other in p["ratios"]]
            ys = [p["ratios"][other][unit] for p in points if other in p["ratios"]]
            line = ax.plot(xs, ys, marker="o", color=colour[other], label=f"vs {other}")[0]
            for p in points:
                r = p["ratios"].get(other)
                if r and r[f"{unit}_bound"] == ">":  # the other never reached the FID: a lower bound
                    ax.annotate("", xy=(p["minutes"], r[unit] * 1.25), xytext=(p["minutes"], r[unit]),
                                arrowprops={"arrowstyle": "->", "color": line.get_color()})
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        top = max(p["ratios"][o][unit] for p in points for o in p["ratios"])
        ax.set_ylim(0, 1.35 * top)  # room for the lower bounds' arrows
        _minutes_axis(ax, points)
        ax.set_ylabel(f"{'GFLOPs' if unit == 'gflops' else 'seconds'} ratio at equal FID")
        ax.set_title(f"{method} at its shipped setting (arrow: lower bound)", fontsize=9)
        ax.legend(fontsize=8)
    ax = axes[2]  # what the ratios sit on: each method's FID, shipped and best on its frontier
    for name in names:
        for key, marker, ls in (("best", "o", "-"), ("shipped", "s", "--")):
            pts = [(p["minutes"], p[key][name]) for p in points if p[key].get(name)]
            if pts:
                ax.errorbar([m for m, _ in pts], [r["fid_mean"] for _, r in pts], yerr=[r["fid_std"] for _, r in pts],
                            marker=marker, ls=ls, capsize=3, color=colour[name], label=f"{name}: {key}")
    _minutes_axis(ax, points)
    ax.set_ylabel("FID (mean ± std over seeds)")
    ax.set_title("FID at the shipped setting and best on each frontier", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="append", required=True, help="MINUTES=bench.json (repeat per budget)")
    ap.add_argument("--method", default="fashion_ecar")
    ap.add_argument("--out", required=True, help="OUT: writes OUT.json and OUT.png")
    args = ap.parse_args()
    points = []
    for item in args.bench:
        minutes, _, path = item.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"error: --bench {item!r}: give MINUTES=PATH to an existing bench.json")
        points.append(summarise(float(minutes), Path(path), args.method))
    points.sort(key=lambda p: p["minutes"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": "python benchmarks/ratio_vs_budget.py " + " ".join(sys.argv[1:]), "method": args.method,
           "budgets": points}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(points, args.method, out.with_suffix(".png"))
    for p in points:
        ratios = ", ".join(f"vs {o}: {r['gflops_bound'] or ''}{r['gflops']:.2f}x GFLOPs / "
                           f"{r['seconds_bound'] or ''}{r['seconds']:.2f}x s" for o, r in p["ratios"].items())
        print(f"{p['minutes']:g} min: {ratios}")


if __name__ == "__main__":
    main()
