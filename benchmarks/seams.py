#!/usr/bin/env python
"""Seams on the token grid, measured (issue 25 point 4): do generated images change more
across the borders of a grid than inside its cells, compared with real images?

    python benchmarks/seams.py OUT.jsonl RUN:SAMPLER:STEPS[:CFG] ... [--n 1000] [--seed 0]

For each period p in ``--periods`` (default 2, 4, 8, 16 pixels: the 2×2 blocks a nearest
upsampling of the finest jump leaves, the 4×4-pixel tokens of the finest stage, the tokens of
the stage before, …) the **seam index** is

    (mean |Δ| over neighbouring pixel pairs that straddle a multiple of p)
    ÷ (mean |Δ| over the pairs inside a p-cell)

over horizontal and vertical pairs of ``--n`` images, divided by the same ratio of ``--n``
real held-out images: 1 = borders look like the data, > 1 = seams (0.05 above 1 is a 5 %
excess of change across the borders). Labels are balanced over the classes, the same for
every setting and the real images' class mix. One JSON line per setting (and one for the
real images) with the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

import torch

import ecar
from ecar.data import build_dataset


def border_ratios(images: torch.Tensor, periods: list[int]) -> dict[int, float]:
    """Mean |Δ| across multiples of p ÷ mean |Δ| inside p-cells, per period (images N×C×H×W)."""
    x = images.float()
    dh = (x[..., :, 1:] - x[..., :, :-1]).abs()  # pair (j, j+1) along the width
    dv = (x[..., 1:, :] - x[..., :-1, :]).abs()
    out = {}
    for p in periods:
        cross_h = (torch.arange(dh.shape[-1]) % p) == p - 1  # j+1 starts a new cell
        cross_v = (torch.arange(dv.shape[-2]) % p) == p - 1
        across = torch.cat([dh[..., cross_h].flatten(), dv[..., cross_v, :].flatten()]).mean()
        inside = torch.cat([dh[..., ~cross_h].flatten(), dv[..., ~cross_v, :].flatten()]).mean()
        out[p] = float(across / inside)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("settings", nargs="+", metavar="RUN:SAMPLER:STEPS[:CFG]")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--periods", default="2,4,8,16")
    a = p.parse_args()
    periods = [int(v) for v in a.periods.split(",")]
    command = "python benchmarks/seams.py " + " ".join(shlex.quote(v) for v in sys.argv[1:])
    rows, real_ratio = [], None
    for spec in a.settings:
        run, sampler, steps, *rest = spec.split(":")
        L = ecar.load(run, "cpu")
        if real_ratio is None:
            ds = build_dataset(L.cfg.data.name, split="heldout")
            real = torch.stack([ds[i][0] for i in range(min(a.n, len(ds)))])
            real_ratio = border_ratios(real, periods)
            rows.append({"setting": "real (held-out)", "n": len(real), "border_ratio": real_ratio,
                         "seam_index": {str(k): 1.0 for k in periods}, "command": command})
        counts = [int(v) for v in steps.split(",")]
        kw = {"stage_steps": counts} if len(counts) > 1 else {"steps": counts[0]}
        if rest:
            kw["cfg"] = float(rest[0])
        sample = dataclasses.replace(L.cfg.sample, sampler=sampler, **kw)
        imgs = L(a.n, sample=sample, seed=a.seed).tensor
        ratio = border_ratios(imgs.clamp(-1, 1), periods)
        rows.append({"setting": spec, "n": a.n, "seed": a.seed, "border_ratio": ratio,
                     "seam_index": {str(k): round(ratio[k] / real_ratio[k], 4) for k in periods},
                     "command": command})
        print(json.dumps(rows[-1]["seam_index"]), spec, flush=True)
    with open(a.out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
