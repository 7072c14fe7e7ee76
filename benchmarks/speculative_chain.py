"""How the head's time grid and an early chain end trade sample quality against speculative
acceptance (issue 9; docs/speculative.md, "Finishing the chain"). Untimed.

For a trained ``ar`` target and a draft, for each (``sample.time_power``, ``sample.chain_end``)
setting: FID of plain sampling of the target (``--fid-n`` images per seed, digits classifier
features against held-out digits) and, for ``--accept-n`` images, the acceptance rate and
tokens per target pass of speculative decoding with the draft. The FID of the target's Euler
ODE is recorded as a reference. Speculative and plain sampling have the same law at every
setting; what changes is the law itself (quality) and how far the draft is from it.

    python benchmarks/speculative_chain.py --target RUN --draft RUN --out OUT.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
from pathlib import Path


import ecar
from ecar.eval.evaluate import fid_of_images
from ecar.eval.features import default_feature_net
from ecar.eval.reference import reference_stats
from ecar.methods import apply_sample_overrides


def summary(v: list[float]) -> dict:
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--out", required=True, help="result JSON (new file)")
    ap.add_argument("--settings", default="1,1;2,1;2,0.96;2,0.91;1,0.9",
                    help="time_power,chain_end pairs separated by ';'")
    ap.add_argument("--sample", nargs="*", default=["steps=10", "gamma=4", "residual_batch=8"],
                    help="further sampling overrides (key=value)")
    ap.add_argument("--fid-n", type=int, default=500)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--accept-n", type=int, default=200)
    args = ap.parse_args()
    if Path(args.out).exists():
        raise SystemExit(f"error: {args.out} exists; choose a new --out")
    target = ecar.load(args.target, "cpu")
    draft = ecar.load(args.draft, "cpu", ema=False)
    drafted = target.with_draft(draft)  # refused unless the draft fits the target
    net = default_feature_net(target.cfg.data.name)
    ref = reference_stats(target.cfg, net)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    base = apply_sample_overrides(target.sample, args.sample)

    def fids(sample) -> dict:
        out = []
        for seed in seeds:
            images = target(args.fid_n, sample=sample, seed=seed, batch_size=250).tensor
            out.append(fid_of_images(images, ref, net))
        return summary(out)

    rows = []
    for item in args.settings.split(";"):
        power, end = (float(v) for v in item.split(","))
        sample = apply_sample_overrides(base, [f"time_power={power}", f"chain_end={end}"])
        spec = drafted(args.accept_n, sample=sample, seed=0, batch_size=args.accept_n).speculative
        row = {"time_power": power, "chain_end": end, "fid_plain": fids(sample),
               "acceptance_rate": spec["acceptance_rate"], "tokens_per_target_pass": spec["tokens_per_target_pass"],
               "speculative": spec}
        print(json.dumps({k: row[k] for k in ("time_power", "chain_end", "acceptance_rate",
                                              "tokens_per_target_pass")}), round(row["fid_plain"]["mean"], 1),
              flush=True)
        rows.append(row)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/speculative_chain.py " + " ".join(sys.argv[1:]),
        "target": {"run": args.target, "steps": target.step},
        "draft": {"run": args.draft, "steps": draft.step},
        "sample": {k: v for k, v in vars(base).items()},
        "fid": {"features": "digits classifier", "reference": "held-out digits", "n": args.fid_n, "seeds": seeds},
        "fid_euler_ode": fids(dataclasses.replace(base, sampler="euler")),
        "settings": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("fid_euler_ode",)}, default=str))


if __name__ == "__main__":
    main()
