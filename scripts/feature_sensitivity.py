#!/usr/bin/env python
"""Does FID on a feature net see what a person sees? Noise and blur curves per net.

    python scripts/feature_sensitivity.py                      # the shipped nets
    python scripts/feature_sensitivity.py --nets digits --dir /tmp/candidate --json out.json

For each classifier feature net: reference = features of the ``train`` split (the first
``--n-ref`` images); test sets = the first ``--n-eval`` ``heldout`` images, degraded by

* Gaussian pixel noise ``x + σ·z`` in [-1, 1] units, σ ∈ ``--noise`` (one fixed ``z`` for
  every σ), and
* Gaussian blur with standard deviation s ∈ ``--blur`` pixels,

each clamped and quantised to uint8 levels exactly as generated images are
(:func:`ecar.eval.features.features_of_images`). Prints FID per level and two scale-free
readings of it:

* ``/clean``: FID / FID(clean held-out images), i.e. how far a degradation stands above the
  floor that two clean real sets already have at these sample sizes;
* ``/drop1``: FID / FID(held-out images with class 0 removed), i.e. the degradation in
  units of a semantic defect that every class-aware feature space sees (a generator that
  never draws one of ten classes). A feature space that "sees what a person sees" should
  put plainly visible grain (σ = 0.1) or a 1-px blur at least on par with it.

A net passes when both curves rise strictly (the check of tests/test_features.py, which
uses smaller sample sizes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ecar.data import build_dataset
from ecar.eval.feature_nets import load_classifier
from ecar.eval.features import ClassifierFeatureExtractor, features_of_images
from ecar.eval.metrics import feature_stats, frechet_distance
from perturbations import add_pixel_noise, gaussian_blur  # scripts/perturbations.py, beside this script

DATASETS = {"digits": "digits", "shapes": "shapes", "fashion": "fashion-mnist"}
NOISE = (0.0, 0.02, 0.05, 0.1, 0.2)
BLUR = (0.0, 0.5, 1.0, 1.5, 2.0)


def split_images(dataset: str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images ``N×C×R×R`` of a split and their int64 labels."""
    ds = build_dataset(dataset, split=split)
    n = min(n, len(ds))
    if hasattr(ds, "images") and hasattr(ds, "labels"):
        return ds.images(0, n), ds.labels[:n]
    items = [ds[i] for i in range(n)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def curves(extractor, reference: torch.Tensor, heldout: torch.Tensor, noise=NOISE, blur=BLUR,
           seed: int = 0, labels: torch.Tensor | None = None) -> dict:
    """``{"noise": [(σ, fid)], "blur": [(s, fid)], "drop_class0": fid, "n_ref", "n_eval"}``
    for one extractor (``drop_class0`` only when ``labels`` of ``heldout`` are given)."""
    ref_f, _ = features_of_images(reference, extractor)
    mu_r, sig_r = feature_stats(ref_f)
    z = torch.randn(heldout.shape, generator=torch.Generator().manual_seed(seed))

    def fid(x: torch.Tensor) -> float:
        f, _ = features_of_images(x, extractor)
        return frechet_distance(*feature_stats(f), mu_r, sig_r)

    out = {} if labels is None else {"drop_class0": fid(heldout[labels != 0])}
    return out | {
        "noise": [(float(s), fid(add_pixel_noise(heldout, s, noise=z))) for s in noise],
        "blur": [(float(s), fid(gaussian_blur(heldout, s))) for s in blur],
        "n_ref": int(reference.shape[0]),
        "n_eval": int(heldout.shape[0]),
    }


def strictly_increasing(values: list[float]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--dir", type=Path, default=None,
                   help="directory of <net>_classifier.{safetensors,json} (default: shipped assets)")
    p.add_argument("--n-ref", type=int, default=5000, help="training images in the reference")
    p.add_argument("--n-eval", type=int, default=1000, help="held-out images per test set")
    p.add_argument("--noise", type=float, nargs="+", default=list(NOISE))
    p.add_argument("--blur", type=float, nargs="+", default=list(BLUR))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the curves here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    results, ok = {}, True
    for name in args.nets:
        t0 = time.time()
        net, meta = load_classifier(name, args.dir)
        extractor = ClassifierFeatureExtractor(net, name, meta=meta)
        dataset = DATASETS[name]
        ref, _ = split_images(dataset, "train", args.n_ref)
        held, labels = split_images(dataset, "heldout", args.n_eval)
        r = curves(extractor, ref, held, args.noise, args.blur, args.seed, labels)
        r["mode"] = meta["arch"].get("features", "pooled")
        r["feature_dim"] = int(net.feature_dim)
        results[name] = r
        print(f"\n{name}: {r['mode']} features, D={r['feature_dim']}, reference {r['n_ref']} train "
              f"images, {r['n_eval']} held-out images ({time.time() - t0:.0f} s); "
              f"FID without class 0: {r['drop_class0']:.3f}")
        for kind, label in (("noise", "noise σ"), ("blur", "blur px")):
            pts = r[kind]
            base = pts[0][1]
            mono = strictly_increasing([v for _, v in pts])
            ok &= mono
            print(f"  {label:8s}" + "".join(f"{s:>10g}" for s, _ in pts))
            print(f"  {'FID':8s}" + "".join(f"{v:10.3f}" for _, v in pts))
            print(f"  {'/clean':8s}" + "".join(f"{v / base:10.2f}" for _, v in pts)
                  + ("   rises strictly" if mono else "   NOT MONOTONIC"))
            print(f"  {'/drop1':8s}" + "".join(f"{v / r['drop_class0']:10.2f}" for _, v in pts))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print("\nall curves rise strictly" if ok else "\nsome curve does not rise strictly")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
