"""Speculative decoding (gamma auto) against the optimised plain sampler over batch sizes
(issue 28, part 3): latency per batch and images per second at batch 1, 4, 16, 64 and 256,
both sides at the same torch thread count, ``--repeats`` interleaved repeats (plain, then
speculative, per batch size and repeat), medians. The JSON holds every time, the γ each
speculative call chose and why (measured acceptance and costs, predicted seconds per γ), and
the command. All calls go through one drafted pipeline, as a user's would: the first call at
each batch size runs gamma="auto"'s pilot, later ones choose from what it remembers
(``pilots`` per row counts the calls that ran one).

    python benchmarks/speculative_batch.py --target RUN --draft DRAFT_RUN --threads 2 \\
        --out benchmarks/results/speculative_batch.json

``--quick``: a tiny random-weight pair (no checkpoints, no training), batches 1 and 4, one
token grid of 16 tokens, 2 repeats — seconds; it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import dataclasses

import torch

import ecar
from ecar.autoencoders import IdentityAutoencoder
from ecar.build import LatentSpec
from ecar.config import load_config
from ecar.methods import apply_sample_overrides
from ecar.methods.ar import AR_METHOD

BATCHES = "1,4,16,64,256"


def quick_pair() -> tuple[ecar.Pipeline, ecar.Pipeline]:
    """A random-weight ar target on 8×8 latents (16 tokens) and a fresh draft head on it, as pipelines."""
    cfg = load_config(None, ["model.name=ar-tiny", "sample.steps=4", "sample.cfg=2.0", "model.context_time=0.9",
                             "sample.time_power=2", "data.resolution=8", "data.channels=1", "data.num_classes=10"])
    target = AR_METHOD.build(cfg.model, LatentSpec(1, 8, 10))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in target.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    draft, draft_model_cfg = AR_METHOD.drafting.make_draft(target.eval(), cfg.model, components=4, width=32)
    ae = IdentityAutoencoder(1)
    return (ecar.Pipeline(target, cfg, ae),
            ecar.Pipeline(draft.eval(), dataclasses.replace(cfg, model=draft_model_cfg), ae))


def timed(fn) -> tuple[float, dict]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="result JSON (new file)")
    ap.add_argument("--target", help="the target ar run")
    ap.add_argument("--draft", help="its draft run (ecar draft)")
    ap.add_argument("--batches", default=BATCHES, help=f"comma-separated batch sizes (default {BATCHES})")
    ap.add_argument("--images", type=int, default=0,
                    help="images per timed call at batch B: max(B, this) rounded up to whole batches (default: B)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: the default)")
    ap.add_argument("--sample", nargs="*", default=["steps=10"], help="sampling overrides (key=value)")
    ap.add_argument("--quick", action="store_true", help="a tiny random pair, batches 1,4, 2 repeats (seconds)")
    args = ap.parse_args()
    if Path(args.out).exists():
        raise SystemExit(f"error: {args.out} exists; choose a new --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        target, draft = quick_pair()
        sample = target.sample
        batches, repeats = [1, 4], min(args.repeats, 2)
    else:
        if not (args.target and args.draft):
            raise SystemExit("error: give --target and --draft runs (or --quick)")
        target, draft = ecar.load(args.target, "cpu"), ecar.load(args.draft, "cpu", ema=False)
        sample = apply_sample_overrides(target.sample, args.sample)
        batches, repeats = [int(b) for b in args.batches.split(",")], args.repeats
    sample = apply_sample_overrides(sample, ["gamma=auto"])
    drafted = target.with_draft(draft)  # refused unless the draft fits the target
    rows = []
    for b in batches:
        calls = max(1, -(-max(args.images, b) // b))
        labels = torch.arange(b) % 10
        row = {"batch": b, "calls": calls, "images": calls * b, "plain_s": [], "speculative_s": [], "choices": [],
               "acceptance": []}
        for r in range(repeats):  # interleaved: a drift of the machine hits both sides alike
            seeds = [r * calls + c for c in range(calls)]  # one pipeline call per sampling call, seeded
            s, _ = timed(lambda: [target(labels=labels, sample=sample, seed=k, batch_size=b) for k in seeds])
            row["plain_s"].append(s)
            s, outs = timed(lambda: [drafted(labels=labels, sample=sample, seed=k, batch_size=b) for k in seeds])
            row["speculative_s"].append(s)
            row["choices"] += [c for o in outs for c in o.speculative["choices"]]
            row["acceptance"] += [o.speculative["acceptance_rate"] for o in outs]
        p, q = statistics.median(row["plain_s"]), statistics.median(row["speculative_s"])
        row.update(plain_latency_s=p / calls, speculative_latency_s=q / calls, plain_images_per_s=row["images"] / p,
                   speculative_images_per_s=row["images"] / q, speedup=p / q,
                   gammas=sorted({c["gamma"] for c in row["choices"]}),
                   pilots=sum(not c.get("remembered") for c in row["choices"]))
        rows.append(row)
        print(f"batch {b:4d}: plain {p / calls:.3f} s, speculative {q / calls:.3f} s per call -> {p / q:.2f}x "
              f"(gamma {row['gammas']})", flush=True)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/speculative_batch.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "target": args.target, "draft": args.draft, "quick": args.quick, "repeats": repeats,
        "sample": {k: v for k, v in vars(sample).items()},
        "timed": "pipeline calls (ecar.Pipeline, decoding included; identity for pixel space), one seed per call",
        "rows": rows,
        "min_speedup": min(r["speedup"] for r in rows),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
