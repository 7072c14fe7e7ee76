#!/usr/bin/env python
"""Exploratory Fashion-MNIST comparison of trained checkpoints at chosen sampler settings.

    python benchmarks/fashion_explore.py --run dit=RUN_DIR --run ecar_th=RUN_DIR \\
        --net-dir DIR --out benchmarks/results/fashion_explore.json

Not the Pareto bench (``ecar bench``, which trains under one wall-clock budget and times
every setting): this scores existing runs at a few settings each, FID (mean ± std over
seeds 0, 1, 2, n = 500 per seed, against the 10,000 held-out test images) and
precision/recall with the fashion feature net found in ``--net-dir`` (default: the
shipped one), and GFLOPs per image (attention included). No timing: it was run on a busy
machine. The settings are those of docs/ecar.md's Fashion-MNIST section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time


import ecar
from ecar.bench.report import summarize
from ecar.eval.evaluate import evaluate_seeds
from ecar.eval.feature_nets import load_classifier
from ecar.eval.features import ClassifierFeatureExtractor
from ecar.eval.reference import reference_stats

SETTINGS = {
    "dit": [("euler", 4), ("euler", 8), ("euler", 16), ("heun", 4), ("heun", 8), ("euler", 32)],
    "ecar": [("euler", [8, 6, 4, 4]), ("euler", [4, 3, 2, 2]), ("euler", [16, 12, 8, 8]),
             ("heun", [4, 3, 2, 2])],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (NAME starting with dit or ecar)")
    p.add_argument("--net-dir", default=None, help="directory of fashion_classifier.* (default: shipped)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    net, meta = load_classifier("fashion", args.net_dir)
    ext = ClassifierFeatureExtractor(net, "fashion", meta=meta)
    rows, ref = [], None
    for item in args.run:
        name, _, run = item.partition("=")
        loaded = ecar.load(run, "cpu")
        if ref is None:
            ref = reference_stats(loaded.cfg, ext, progress=False)
        for sampler, steps in SETTINGS["dit" if name.startswith("dit") else "ecar"]:
            kw = {"stage_steps": steps} if isinstance(steps, list) else {"steps": steps}
            s = dataclasses.replace(loaded.cfg.sample, sampler=sampler, **kw)
            t0 = time.time()
            r = evaluate_seeds(loaded, seeds=(0, 1, 2), n=args.n,
                               metrics=("fid", "pr"), features=ext, reference=ref, sample=s, progress=False)
            rows.append({"name": name, "setting": f"{sampler} {steps}", "steps": steps, "sampler": sampler,
                         "fid_mean": r["fid_mean"], "fid_std": r["fid_std"], "fid_per_seed": r["fid_per_seed"],
                         "precision": r["precision"], "recall": r["recall"],
                         "gflops_per_image": loaded.gflops(s, batch=2),
                         "seconds_per_image": None, "train_steps": loaded.step,
                         "reference_split": r["reference_split"]})
            print(json.dumps(rows[-1]), f"{time.time() - t0:.0f} s", flush=True)
    doc = {"command": "python benchmarks/fashion_explore.py " + " ".join(f"--run {r}" for r in args.run),
           "feature_net": meta, "n_per_seed": args.n, "seeds": [0, 1, 2], "rows": rows,
           "methods": summarize(rows)}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1, default=str)


if __name__ == "__main__":
    main()
