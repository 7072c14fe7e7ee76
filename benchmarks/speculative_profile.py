"""Where a speculative call's time goes at batch 1 (issue 28): cProfile over whole pipeline
calls of a drafted ``ar`` run, the cumulative seconds of the engine's parts — the target's
transformer passes (which also condition a draft head on the same transformer), the draft's
recorded chains, the verification head calls, residual redraws, and ``gamma="auto"``'s pilot —
as shares of the calls' time, for a fresh pipeline per call (a pilot in every call: the
behaviour before the γ memory) and for one pipeline across calls (the memory), and for fixed γ.

    python benchmarks/speculative_profile.py --target RUN --draft DRAFT_RUN \\
        --out benchmarks/results/speculative_profile.json

cProfile slows Python-heavy parts more than torch kernels: the shares say where time goes,
the seconds are not a speed claim (benchmarks/speculative_batch.py times).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import json
import platform
import pstats
import sys
from pathlib import Path

import torch

import ecar
from ecar.methods import apply_sample_overrides

PARTS = {  # (file suffix, function) -> part
    ("engine/speculative.py", "conditions"): "transformer passes",
    ("samplers/chain.py", "sample_steps"): "draft chains",
    ("engine/speculative.py", "_verify"): "verification head calls",
    ("engine/speculative_residual.py", "redraw"): "residual redraws",
    ("engine/speculative.py", "_auto"): "auto pilot (its tokens included)",
    ("engine/speculative.py", "generate_speculative"): "whole engine call",
}


def profile(calls, label: str) -> dict:
    prof = cProfile.Profile()
    prof.enable()
    calls()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    seconds = {part: 0.0 for part in PARTS.values()}
    for (file, _, func), (_, _, _, cum, _) in stats.items():
        for (suffix, name), part in PARTS.items():
            if func == name and file.endswith(suffix):
                seconds[part] += cum
    total = seconds["whole engine call"]
    return {"label": label, "seconds": seconds,
            "shares": {k: v / total for k, v in seconds.items() if k != "whole engine call"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=8, help="batch-1 calls per variant")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if Path(args.out).exists():
        raise SystemExit(f"error: {args.out} exists; choose a new --out")
    torch.set_num_threads(args.threads)
    target, draft = ecar.load(args.target, "cpu"), ecar.load(args.draft, "cpu", ema=False)
    labels = torch.arange(1)
    auto = apply_sample_overrides(target.sample, ["steps=10", "gamma=auto"])
    remembering = target.with_draft(draft)
    remembering(labels=labels, sample=auto, seed=10_000, batch_size=1)  # its first call: the pilot
    variants = [
        ("auto, a pilot in every call", lambda: [target.with_draft(draft)(labels=labels + k % 10, sample=auto, seed=k,
                                                                          batch_size=1) for k in range(args.images)]),
        ("auto, remembered (one pipeline)", lambda: [remembering(labels=labels + k % 10, sample=auto, seed=k,
                                                                 batch_size=1) for k in range(args.images)]),
    ]
    for g in (2, 4, 6):
        fixed = apply_sample_overrides(auto, [f"gamma={g}"])
        variants.append((f"gamma={g}", lambda s=fixed: [remembering(labels=labels + k % 10, sample=s, seed=k,
                                                                    batch_size=1) for k in range(args.images)]))
    rows = []
    for label, calls in variants:
        rows.append(profile(calls, label))
        print(label, {k: round(v, 2) for k, v in rows[-1]["shares"].items()}, flush=True)
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python benchmarks/speculative_profile.py " + " ".join(sys.argv[1:]),
           "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                       "torch": torch.__version__},
           "batch": 1, "images_per_variant": args.images, "sample": "steps=10, the target's shipped guidance",
           "note": "cProfile cumulative seconds (parts nest: the pilot contains passes, chains and verification "
                   "calls of its own tokens); shares of the whole engine call", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
