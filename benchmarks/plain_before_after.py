#!/usr/bin/env python
"""Plain decoding of a causal ``ar`` target, timed with two versions of ecar (issue 28,
acceptance 3: plain decoding faster than before at the same samples).

    python benchmarks/plain_before_after.py --target RUN --before SRC_DIR --threads 2 \\
        --out benchmarks/results/speculative_plain_before_after.json

``--before`` is the ``src`` folder of the older checkout (e.g. ``git worktree add /tmp/old
3cee74d`` → ``/tmp/old/src``); the current one is this checkout's. Each repeat runs one child
process per version (alternating, so a drift of the machine hits both alike) that times
``AR_METHOD.generate`` at every batch size (``--images`` images per size, whole batches,
seed = the repeat), and returns the times and the images. The JSON holds the medians per
version and batch size, the speed-up, and the largest difference between the two versions'
images (the same seeds: the same samples up to float rounding).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CHILD = r"""
import json, sys, time, torch
from ecar.methods.ar import AR_METHOD
target, batches, images, threads, seed, out = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
try:  # before issue 26 (the Python API): build.load_for_inference
    from ecar.build import load_for_inference
    L = load_for_inference(target, torch.device("cpu"))
    model, sample = L.model.eval(), L.cfg.sample
except ImportError:  # since: ecar.load -> Pipeline
    import ecar
    pipe = ecar.load(target, "cpu")
    model, sample = pipe.model.eval(), pipe.sample
res, first = {}, {}
for b in batches:
    labels = torch.arange(b) % 10
    calls = max(1, -(-max(images, b) // b))
    AR_METHOD.generate(model, sample, labels[:1], torch.Generator().manual_seed(0))  # warm-up
    gen = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    outs = [AR_METHOD.generate(model, sample, labels, gen) for _ in range(calls)]
    res[b] = (time.perf_counter() - t) / calls
    o = outs[0]
    first[b] = o["latents"].tolist()
json.dump({"seconds_per_call": res, "first": first}, open(out, "w"))
"""


def child(src: str, args, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        env = dict(os.environ, PYTHONPATH=src)
        subprocess.run([sys.executable, "-c", CHILD, args.target, json.dumps(args.batches), str(args.images),
                        str(args.threads), str(seed), str(out)], env=env, check=True)
        return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--before", required=True, help="src folder of the older ecar")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batches", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16, 64, 256])
    ap.add_argument("--images", type=int, default=16, help="images per batch size and repeat (whole batches)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    now = str(Path(__file__).resolve().parents[1] / "src")
    runs = {"before": [], "after": []}
    for r in range(args.repeats):
        runs["before"].append(child(args.before, args, r))
        runs["after"].append(child(now, args, r))
    rows = []
    for b in args.batches:
        key = str(b)
        before = statistics.median(x["seconds_per_call"][key] for x in runs["before"])
        after = statistics.median(x["seconds_per_call"][key] for x in runs["after"])
        diff = max(float((torch.tensor(x["first"][key]) - torch.tensor(y["first"][key])).abs().max())
                   for x, y in zip(runs["before"], runs["after"]))
        rows.append({"batch": b, "before_s_per_call": before, "after_s_per_call": after,
                     "speedup": before / after, "max_abs_difference_of_samples": diff})
        print(f"batch {b:4d}: before {before:.3f} s, after {after:.3f} s -> {before / after:.2f}x "
              f"(samples differ by <= {diff:.2e})", flush=True)
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python benchmarks/plain_before_after.py " + " ".join(sys.argv[1:]),
           "machine": {"platform": platform.platform(), "threads": args.threads},
           "rows": rows, "raw_seconds_per_call": {k: [x["seconds_per_call"] for x in v] for k, v in runs.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
