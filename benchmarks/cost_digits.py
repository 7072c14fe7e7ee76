"""Sampling cost of the default digits recipes: E-CAR against DiT (and FlowAR mode).

Measures each recipe at its shipped sampler settings with :func:`ecar.eval.cost.measure_cost`
and its defaults — the one protocol that ``ecar bench`` and ``ecar demo`` use too: FLOPs of
one whole sampling call (PyTorch's FLOP counter, guidance and attention included) and the
median time of repeated calls after warm-up, both on ``TIMING_BATCH`` images, with torch's
thread count as it is (set ``OMP_NUM_THREADS`` to change it). FLOPs and time do not depend
on the weights' values, so freshly initialised networks of each recipe's architecture are
measured unless --ckpts is given. Time only on a quiet machine (check ``uptime``).

    python benchmarks/cost_digits.py --out benchmarks/results/cost_digits.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

import torch

import ecar
from ecar.autoencoders import IdentityAutoencoder
from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.eval.cost import measure_cost
from ecar.methods import method_of

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["digits_dit.yaml", "digits_ecar.yaml", "digits_flowar.yaml"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/cost_digits.json"))
    ap.add_argument("--ckpts", nargs="*", help="trained checkpoints, in the order of the recipes")
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]  # recorded: timing is only meaningful on a quiet machine

    rows = []
    for i, recipe in enumerate(RECIPES):
        if args.ckpts:
            pipe = ecar.load(args.ckpts[i], "cpu")
        else:
            cfg = load_config(ROOT / "configs" / recipe)
            cfg.data.resolution, cfg.data.channels, cfg.data.num_classes = 16, 1, 10
            torch.manual_seed(0)
            model, _ = build_model(cfg, LatentSpec(1, 16, 10))
            pipe = ecar.Pipeline(model.eval(), cfg, IdentityAutoencoder(1))
        cost = measure_cost(pipe)
        cfg, model = pipe.cfg, pipe.model
        s, method = cfg.sample, method_of(cfg.model)
        rows.append({
            "recipe": recipe,
            "model": cfg.model.name,
            "mode": method.name,
            "params": sum(p.numel() for p in model.parameters()),
            "sampler": s.sampler,
            "steps": method.step_counts(model, s),
            "cfg": s.cfg,
            **cost.as_dict(),
        })
        print(f"{recipe:22s} {rows[-1]['gflops_per_image']:.4f} GFLOPs/img  "
              f"{rows[-1]['seconds_per_image'] * 1e3:.3f} ms/img")
    base = rows[0]
    for r in rows:
        r["gflops_vs_dit"] = base["gflops_per_image"] / r["gflops_per_image"]
        r["time_vs_dit"] = base["seconds_per_image"] / r["seconds_per_image"]
    result = {
        "command": "python benchmarks/cost_digits.py" + (" --ckpts ..." if args.ckpts else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "load_average_1min_at_start": round(load_at_start, 2),
        "note": "gflops_vs_dit / time_vs_dit = how many times cheaper than the DiT recipe",
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for r in rows[1:]:
        print(f"{r['recipe']}: {r['gflops_vs_dit']:.1f}x fewer GFLOPs, {r['time_vs_dit']:.1f}x less time than DiT")


if __name__ == "__main__":
    main()
