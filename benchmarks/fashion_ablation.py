#!/usr/bin/env python
"""E-CAR ablations on Fashion-MNIST: train recipe variants for a fixed number of steps and
find out where quality is lost.

    python benchmarks/fashion_ablation.py --out runs/ablation --steps 500 --threads 1 \\
        --variant A= --variant C=flow.time_sampling=uniform \\
        --json benchmarks/results/fashion_ablation.json

Each ``--variant NAME=OVERRIDES`` (comma-separated ``section.key=value``; lists in brackets
are kept together) trains ``configs/fashion_ecar.yaml`` (or ``--config``) with those
overrides for ``--steps`` optimiser steps — a fixed step count, not a time budget, so
variants may be trained side by side (``--threads 1`` each) without timing mattering;
what a variant costs per step is a separate question. Then it scores the EMA weights:

* ``fid``: free-running samples (``--n`` per seed, seed 0, the recipe's shipped sampler
  with guidance only where the progress is <= 0.7: ``cfg_interval [0, 0.7]``, i.e. E-CAR
  stages 1..S−1), FID against the 10,000 held-out test images with the shipped fashion
  feature net (DiT recipes via ``--config`` get this score only);
* ``fid_free_from_k``: the model generates only stages k..S, starting from the true
  (noised) states of the training images before stage k (``--n`` training images) — the
  gap between consecutive k says how much FID each stage costs. ``free_from_{S+1}`` is the
  real images themselves (the FID floor at this n).

Rows go into ``--json`` (one JSON document, a list of rows; a variant's row is replaced
when it is scored again), each with the command that regenerates it.
Existing run directories are reused (delete one to retrain it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

import ecar
from ecar.checkpoint import has_checkpoint
from ecar.data import build_dataset
from ecar.eval.evaluate import evaluate_seeds
from ecar.eval.features import load_feature_net, quantize
from ecar.eval.reference import reference_stats
from ecar.eval.metrics import feature_stats, frechet_distance
from ecar.flow.pyramid import jump, stage_targets
from ecar.methods.ecar import stage_guidance
from ecar.samplers import guided, integrate, time_grid


def split_overrides(text: str) -> list[str]:
    """'a=1,b=[1,2],c=x' -> ['a=1', 'b=[1,2]', 'c=x'] (commas inside brackets stay)."""
    return [p for p in re.split(r",(?![^\[]*\])", text) if p]


def train(name: str, overrides: list[str], args) -> Path:
    run = Path(args.out) / name
    if has_checkpoint(run):
        return run
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "ecar", "train", "--config", args.config, "--out", str(run), "--quiet",
           f"train.max_steps={args.steps}", f"train.ckpt_every={args.steps}", *overrides]
    subprocess.run(cmd, check=True, env=env)
    return run


@torch.no_grad()
def teacher_forced_fids(L, ext, ref, n: int, guidance: list[float], sampler: str = "euler",
                        steps: list[int] | None = None) -> dict:
    """FID when the model generates stages k..S from the true states before stage k
    (``sampler`` with ``steps`` per stage; default: Euler at the run's shipped counts)."""
    m, sched = L.model, L.model.schedule
    steps = list(steps or L.cfg.sample.stage_steps or [L.cfg.sample.steps] * m.num_stages)
    ds = build_dataset(L.cfg.data.name, split="train")
    x = ds.images(5000, 5000 + n)
    y = torch.tensor([int(ds[i][1]) for i in range(5000, 5000 + n)])
    g = torch.Generator().manual_seed(0)
    tg = stage_targets(x, sched, g)
    out = {}
    for k in range(m.num_stages + 1):
        ends = []
        for i in range(0, n, 100):
            sl = slice(i, i + 100)
            if k == m.num_stages:
                ends.append(x[sl])
                continue
            yy = y[sl]
            y2 = torch.cat([yy, torch.full_like(yy, m.null_class)])

            def ar_in(prev, s, start):  # the AR input of stage s (model.ar_input), both halves
                inp = m.ar_input(prev, s, start)
                return None if inp is None else torch.cat([inp] * 2)

            conds = [ar_in(tg[s - 1]["end"][sl] if s else None, s, tg[s]["start"][sl]) for s in range(k)]
            start = tg[k]["start"][sl]
            cond = ar_in(tg[k - 1]["end"][sl] if k else None, k, start)
            for s in range(k, m.num_stages):
                zc = m.head_condition(m.condition(conds + [cond], y2)[-1])

                def head(xx, u, zz, s=s):
                    return m.velocity(xx, u.expand(xx.shape[0]), zz, s)

                v = guided(head, *zc.chunk(2), lambda t, sc=guidance[s]: sc)
                end = m.stage_latent(integrate(sampler, v, m.stage_tokens(start), time_grid(steps[s]), g), s)
                conds = conds + [cond]
                if s + 1 < m.num_stages:
                    size = sched.sizes[s + 1]
                    start = jump(end, sched.tau[s], sched.sigma[s + 1], size, g)
                    cond = ar_in(end, s + 1, start)
            ends.append(end)
        feats = ext(quantize(torch.cat(ends).clamp(-1, 1)))[0]
        mu, sigma = feature_stats(feats)
        out[f"fid_free_from_{k + 1}"] = round(float(frechet_distance(mu, sigma, ref["mu"], ref["sigma"])), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", action="append", required=True, help="NAME=OVERRIDES (comma-separated)")
    p.add_argument("--config", default="configs/fashion_ecar.yaml")
    p.add_argument("--out", default="runs/ablation", help="run directories go here")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--dit-steps", type=int, default=8, help="Euler steps when scoring a DiT recipe")
    p.add_argument("--extra", nargs="*", default=[], metavar="SAMPLER:STEPS",
                   help="more settings to score (free-running FID only), e.g. euler:4,3,2,2 or euler:4")
    p.add_argument("--json", default="benchmarks/results/fashion_ablation.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ext = load_feature_net("fashion")
    path = Path(args.json)
    doc = json.loads(path.read_text()) if path.exists() else {"rows": []}
    for spec in args.variant:
        name, _, text = spec.partition("=")
        overrides = split_overrides(text)
        t0 = time.time()
        run = train(name, overrides, args)
        L = ecar.load(run, "cpu")
        ref = reference_stats(L.cfg, ext, split="heldout", progress=False)
        sample = dataclasses.replace(L.cfg.sample, cfg_interval=[0.0, 0.7])
        multistage = hasattr(L.model, "schedule")
        if not multistage:
            sample = dataclasses.replace(sample, sampler="euler", steps=args.dit_steps)
        r = evaluate_seeds(L, seeds=(0,), n=args.n, metrics=("fid", "pr"),
                           features=ext, reference=ref, sample=sample, progress=False)
        row = {"variant": name, "overrides": overrides, "train_steps": L.step, "n": args.n,
               "stage_steps": getattr(sample, "stage_steps", None), "cfg": sample.cfg, "cfg_interval": sample.cfg_interval,
               "fid": round(r["fid_mean"], 2), "precision": round(r["precision"], 3),
               "recall": round(r["recall"], 3), "reference_split": r["reference_split"],
               "gflops_per_image": round(L.gflops(sample, batch=2), 3),
               "steps": None if multistage else sample.steps,
               **(teacher_forced_fids(L, ext, ref, args.n, stage_guidance(sample, L.model.num_stages))
                  if multistage else {}),
               "seconds": round(time.time() - t0),
               "command": f"python benchmarks/fashion_ablation.py --config {args.config} --steps {args.steps} "
                          f"--n {args.n} --dit-steps {args.dit_steps} --variant '{spec}'"}
        row["extra"] = []
        for setting in args.extra:
            name_, _, steps = setting.partition(":")
            steps = [int(v) for v in steps.split(",")]
            kw = {"stage_steps": steps} if multistage else {"steps": steps[0]}
            extra = dataclasses.replace(sample, sampler=name_, **kw)
            e = evaluate_seeds(L, seeds=(0,), n=args.n, metrics=("fid", "pr"),
                               features=ext, reference=ref, sample=extra, progress=False)
            row["extra"].append({"setting": setting, "fid": round(e["fid_mean"], 2),
                                 "precision": round(e["precision"], 3), "recall": round(e["recall"], 3),
                                 "gflops_per_image": round(L.gflops(extra, batch=2), 3)})
        if args.extra:
            row["command"] += " --extra " + " ".join(args.extra)
        print(json.dumps(row), flush=True)
        doc["rows"] = [x for x in doc["rows"] if x["variant"] != name] + [row]
        doc["feature_net"] = ext.meta
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
