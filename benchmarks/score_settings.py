#!/usr/bin/env python
"""Score one trained run at chosen sampler settings (exploration; no timing).

    python benchmarks/score_settings.py RUN_DIR OUT.jsonl euler:8,6,4,4 euler:4 \\
        [--seeds 0] [--n 500] [--cfg 2] [--interval 0,0.7]

Each setting is ``SAMPLER:STEPS`` (one number for DiT, one per stage for E-CAR / FlowAR).
FID (mean ± std over ``--seeds``, ``--n`` samples each) and precision/recall with the
shipped feature net of the run's dataset, against its held-out split; GFLOPs per image
(attention and guidance included). One JSON line per setting is appended to OUT.jsonl with
the command that produced it. ``--interval`` sets ``sample.cfg_interval`` (omit: the run's
own setting). Used for docs/ecar.md's Fashion-MNIST experiments
(``benchmarks/results/fashion_settings.jsonl``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time


import ecar
from ecar.eval.evaluate import evaluate_seeds
from ecar.eval.features import default_feature_net, load_feature_net
from ecar.eval.reference import reference_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("out")
    p.add_argument("settings", nargs="+", metavar="SAMPLER:STEPS")
    p.add_argument("--seeds", default="0")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--interval", default=None, metavar="LO,HI")
    p.add_argument("--features", default=None,
                   help="feature net (default: the dataset's shipped net; 'inception' for Inception FID)")
    p.add_argument("--ref-max", type=int, default=None, help="use at most this many reference images")
    p.add_argument("--teacher-forced", action="store_true",
                   help="E-CAR / FlowAR: also the FIDs with stages k..S generated from the true states before "
                        "stage k (fid_free_from_k, benchmarks/fashion_ablation.py; --n training images, seed 0)")
    a = p.parse_args()
    L = ecar.load(a.run, "cpu")
    name = a.features or default_feature_net(L.cfg.data.name)
    ext = load_feature_net(name)
    ref = reference_stats(L.cfg, ext, max_images=a.ref_max, progress=False)
    command = "python benchmarks/score_settings.py " + " ".join(shlex.quote(v) for v in sys.argv[1:])
    for setting in a.settings:
        sampler, steps = setting.split(":")
        steps = [int(v) for v in steps.split(",")]
        kw = {"stage_steps": steps} if len(steps) > 1 else {"steps": steps[0], "stage_steps": None}
        if a.cfg is not None:
            kw["cfg"] = a.cfg
        if a.interval is not None:
            kw["cfg_interval"] = [float(v) for v in a.interval.split(",")]
        known = {f.name for f in dataclasses.fields(L.cfg.sample)}  # DiT has no stage_steps
        s = dataclasses.replace(L.cfg.sample, sampler=sampler,
                                **{k: v for k, v in kw.items() if k in known or v is not None})
        t = time.time()
        r = evaluate_seeds(L, seeds=tuple(int(v) for v in a.seeds.split(",")),
                           n=a.n, metrics=("fid", "pr"), features=ext, reference=ref, sample=s, progress=False)
        row = {"run": a.run, "setting": setting, "features": name, "reference_images": ref["n_images"], "cfg": s.cfg, "cfg_interval": s.cfg_interval,
               "train_steps": L.step, "fid": round(r["fid_mean"], 2), "fid_std": round(r["fid_std"] or 0, 2),
               "seeds": a.seeds, "n": a.n, "precision": round(r["precision"], 3), "recall": round(r["recall"], 3),
               "reference_split": r["reference_split"],
               "gflops_per_image": round(L.gflops(s, batch=2), 3),
               "seconds": round(time.time() - t), "command": command}
        if a.teacher_forced and len(steps) > 1:
            from fashion_ablation import teacher_forced_fids  # benchmarks/ is this script's folder
            from ecar.methods.ecar import stage_guidance
            row.update(teacher_forced_fids(L, ext, ref, a.n, stage_guidance(s, L.model.num_stages), sampler, steps))
        print(json.dumps(row), flush=True)
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
