#!/usr/bin/env python
"""xAR variants at a fixed training step count: the noisy-context ablation and the unit
screening (docs/xar.md).

    python benchmarks/xar_variants.py --config configs/digits_xar.yaml --steps 1500 \\
        --variant noisy=model.noisy_context=true --variant clean=model.noisy_context=false \\
        --seeds 0,1,2 --n 1000 --out runs/xar_ablation \\
        --json benchmarks/results/xar_noisy_context.json

Each ``--variant NAME=OVERRIDES`` (comma-separated ``section.key=value``) trains the recipe
with those overrides (``sample.*`` ones go to ``ecar eval`` as flags instead) for ``--steps``
optimiser steps (``ecar train``; a fixed step count, not
a time budget, so nothing here is a timing) and scores the EMA weights with ``ecar eval
--seeds`` (FID mean ± std over the sampling seeds, against the held-out split), plus the
GFLOPs per image of the shipped sampler (:meth:`ecar.Pipeline.gflops`) and the
training step's wall time as logged (indicative only: the machine is shared). Rows go into
``--json`` (a list; a variant's row is replaced when it is scored again), each with the
commands that made it. Existing run directories and scores are reused (delete one to redo it); a
variant named ``RUN@LABEL`` scores the run of variant ``RUN`` (same training overrides,
checked) with its own sampling overrides, e.g. ``noisy@ctx0.9=model.noisy_context=true,
sample.context_time=0.9``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path


import ecar
from ecar.methods import apply_sample_overrides


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, required=True, help="optimiser steps of every variant")
    p.add_argument("--variant", action="append", required=True, metavar="NAME=OVERRIDES")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n", type=int, default=1000, help="images per seed for the FID")
    p.add_argument("--out", required=True, help="directory of the runs")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)
    out, path = Path(args.out), Path(args.json)
    rows = json.loads(path.read_text()) if path.exists() else []
    py = [sys.executable, "-m", "ecar"]
    for spec in args.variant:
        name, _, text = spec.partition("=")
        overrides = [o for o in re.split(r",(?![^\[]*\])", text) if o]
        sample = [o for o in overrides if o.startswith("sample.")]
        training = [o for o in overrides if not o.startswith("sample.")]
        base = name.split("@")[0]
        run = out / base
        if base != name:
            same = [r for r in rows if r["variant"] == base]
            if not same or [o for o in same[0]["overrides"] if not o.startswith("sample.")] != training:
                raise SystemExit(f"variant {name} scores the run of variant {base}: give {base} first, with "
                                 f"the same training overrides ({training})")
        train_cmd = py + ["train", "--quiet", "--config", args.config, "--out", str(run),
                          f"train.max_steps={args.steps}", "train.tensorboard=false", *training]
        if not (run / "checkpoints").exists():
            _run(train_cmd)
        score = run / f"eval-{name}.json"
        eval_cmd = py + ["eval", "--ckpt", str(run), "--n", str(args.n), "--seeds", args.seeds,
                         "--metrics", "fid", "--json", str(score)]
        for o in sample:
            key, _, value = o[len("sample."):].partition("=")
            eval_cmd += ["--" + key.replace("_", "-"), value]
        if not score.exists():  # delete it to score again
            _run(eval_cmd)
        res = json.loads(score.read_text())
        loaded = ecar.load(run, "cpu")
        gflops = loaded.gflops(apply_sample_overrides(loaded.sample, sample), batch=64)
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        last = [r for r in logs if "loss" in r][-1]
        row = {"variant": name, "overrides": overrides, "config": args.config, "train_steps": args.steps,
               "fid_mean": res["fid_mean"], "fid_std": res["fid_std"], "fid_per_seed": res["fid_per_seed"],
               "seeds": res["seeds"], "n": args.n, "reference_split": res.get("reference_split"),
               "steps": res["steps"], "sampler": res["sampler"], "gflops_per_image": gflops,
               "final_loss": last["loss"], "params": loaded.params,
               "commands": [" ".join(train_cmd), " ".join(eval_cmd)]}
        rows = [r for r in rows if r["variant"] != name] + [row]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"{name}: FID {row['fid_mean']:.2f} ± {row['fid_std']:.2f}, {gflops:.3f} GFLOPs/image", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
