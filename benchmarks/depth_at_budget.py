#!/usr/bin/env python
"""The depth of a recipe at a training budget, chosen at equal training FLOPs (issue 25,
point 5; the procedure of docs/ecar.md, "Depth, for both, at equal training compute").

A time-budgeted run of the recipe (``ecar train … train.max_minutes=M``) fixes the budget in
training FLOPs: its steps × the recipe's training FLOPs per step. Each candidate depth is
trained for the steps that cost the same FLOPs (a step budget, so candidates may train side by
side with ``--threads 1`` and no timing matters; the cosine schedule then spans the candidate's
own steps, as the time-driven one spans the budget), and all are scored alike afterwards
(``ecar bench --ckpts …``). Training FLOPs are counted with ``FlopCounterMode`` (forward and
backward of the recipe's objective, per image).

    python benchmarks/depth_at_budget.py --run runs/b60/fashion_ecar/run --recipe configs/fashion_ecar.yaml \\
        --depths 2 --out-dir runs/b60/depth --json benchmarks/results/depth_at_60min.json [--train --threads 1]

Without ``--train`` it writes the plan (steps and commands) and stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/throughput.py: its training-FLOP count)

import ecar  # noqa: E402
from ecar.build import build_model, latent_spec  # noqa: E402
from ecar.config import load_config  # noqa: E402

BATCH = 8


def train_gflops_per_image(cfg, depth: int) -> float:
    """Forward + backward of the objective of a resolved config at ``depth``, GFLOPs per image
    (random data and weights; :func:`throughput.train_gflops_per_image`)."""
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=depth))
    spec = latent_spec(cfg)
    torch.manual_seed(0)
    model, method = build_model(cfg, spec)
    x = torch.randn(BATCH, spec.channels, spec.size, spec.size)
    y = torch.arange(BATCH) % spec.num_classes
    return throughput.train_gflops_per_image(method.objective(model, cfg.flow), x, y, torch.Generator().manual_seed(0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="the time-budgeted run that fixes the budget")
    ap.add_argument("--recipe", required=True, help="its recipe (configs/*.yaml)")
    ap.add_argument("--depths", required=True, help="candidate depths, comma-separated")
    ap.add_argument("--out-dir", required=True, help="where the candidates' runs go (OUT/depthD)")
    ap.add_argument("--json", required=True, help="the plan and, with --train, what ran")
    ap.add_argument("--train", action="store_true", help="train the candidates (one after the other)")
    ap.add_argument("--threads", type=int, default=0, help="OMP/torch threads of each training (0: default)")
    args = ap.parse_args()
    run = ecar.load(args.run, "cpu")
    base_depth, steps, batch = int(run.cfg.model.depth), int(run.step or 0), int(run.cfg.train.batch_size)
    recipe = load_config(args.recipe, [])
    if (recipe.model.name, recipe.model.depth) != (run.cfg.model.name, base_depth):
        raise SystemExit(f"error: {args.run} ({run.cfg.model.name}, depth {base_depth}) is not a run of "
                         f"{args.recipe} ({recipe.model.name}, depth {recipe.model.depth})")
    base = train_gflops_per_image(run.cfg, base_depth)
    budget = steps * batch * base
    plan = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmarks/depth_at_budget.py " + " ".join(sys.argv[1:]),
            "run": args.run, "recipe": args.recipe, "depth": base_depth, "steps": steps, "batch_size": batch,
            "train_gflops_per_image": base, "budget_gflops": budget, "candidates": []}
    for d in (int(v) for v in args.depths.split(",")):
        per_image = train_gflops_per_image(run.cfg, d)
        n = round(budget / (batch * per_image))
        out = Path(args.out_dir) / f"depth{d}"
        cmd = ["ecar", "train", "--config", args.recipe, "--out", str(out), "--quiet", f"model.depth={d}",
               f"train.max_steps={n}", "train.max_minutes=0"]
        plan["candidates"].append({"depth": d, "train_gflops_per_image": per_image, "steps": n, "run": str(out),
                                   "command": " ".join(cmd)})
        print(f"depth {d}: {per_image:.4f} GFLOPs per image -> {n} steps ({' '.join(cmd)})", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
    if args.train:
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
        for c in plan["candidates"]:
            subprocess.run(c["command"].split() + (["--resume"] if Path(c["run"]).exists() else []), check=True,
                           env=env)


if __name__ == "__main__":
    main()
