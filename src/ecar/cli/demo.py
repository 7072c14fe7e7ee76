"""``ecar demo``: train E-CAR on fashion-mini for a few minutes and show what it makes."""

from __future__ import annotations

import textwrap
from pathlib import Path

from ecar.demo import DEFAULT_MINUTES, run_demo

from ecar.cli.common import UsageError, formatter

def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train E-CAR on Fashion-MNIST images (shipped) for 5 minutes and show what it makes",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            The main job on the embedded default: trains the E-CAR recipe of configs/
            fashion_mini_ecar.yaml on fashion-mini (8,000 Fashion-MNIST images that ship in
            the package: nothing is downloaded) on this machine for a wall-clock budget, then
            writes
              DIR/samples.png   10 samples of each class, one row per class, named
              DIR/stages.png    every stage's output, coarse to fine, one row per class
              DIR/growing.gif   one sample of each class growing from the coarsest stage
              DIR/metrics.json  model, params, train_steps, train_seconds, gflops_per_image,
                                seconds_per_image, fid (against the 2,000 held-out images),
                                class_accuracy (of the same samples, shipped classifier)
              DIR/run/          the checkpoint (use it with `ecar sample --ckpt DIR/run`
                                or `ecar serve`)

            examples:
              ecar demo
              ecar demo --out my-demo --minutes 2
            """
        ),
    )
    p.add_argument("--out", default="ecar-demo", help="output directory (default: ecar-demo)")
    p.add_argument("--minutes", type=float, default=None,
                   help=f"training budget in minutes (default {DEFAULT_MINUTES:g})")
    p.add_argument("--fid-samples", type=int, default=1000,
                   help="images for the FID and the class accuracy (0 = skip both)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")


def cmd_demo(args) -> int:
    minutes = DEFAULT_MINUTES if args.minutes is None else args.minutes
    if minutes <= 0:
        raise UsageError("--minutes must be > 0")
    m = run_demo(args.out, minutes, args.overrides, progress=not args.quiet, fid_samples=args.fid_samples)
    out = Path(args.out)
    print()
    print(f"E-CAR demo: {m['model']} ({m['params'] / 1e6:.2f} M parameters), "
          f"{m['train_steps']} steps in {m['train_seconds']:.0f} s")
    line = f"  sampling: {m['gflops_per_image'] * 1e3:.1f} MFLOPs and {m['seconds_per_image'] * 1e3:.2f} ms per image"
    if "fid" in m:
        line += f"; FID {m['fid']:.2f} ({m['fid_samples']} samples, {m['fid_features']} features)"
    print(line)
    if "class_accuracy" in m:
        print(f"  class accuracy of the samples: {m['class_accuracy']:.3f} (shipped {m['fid_features']} classifier)")
    print(f"  samples:  {out / 'samples.png'}")
    print(f"  stages:   {out / 'stages.png'}")
    print(f"  growing:  {out / 'growing.gif'}")
    print(f"  metrics:  {out / 'metrics.json'}")
    print(f"  more:     ecar sample --ckpt {out / 'run'} --n 16 --out grid.png   |   ecar serve")
    return 0
