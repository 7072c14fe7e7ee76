"""``ecar info``: what a checkpoint holds (config, size, step) and where its sampling FLOPs go."""

from __future__ import annotations

import textwrap

from ecar.config import config_to_yaml
from ecar.eval.cost import PARTS, cost_anatomy
from ecar.pipeline import load

from ecar.cli.common import formatter

def add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show a checkpoint's config, size and step",
        formatter_class=formatter,
        description="Print a checkpoint's resolved config, parameter count and training step.\n\n"
        "example:\n  ecar info --ckpt runs/dit",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory")


def cmd_info(args) -> int:
    pipe = load(args.ckpt, "cpu")
    params = pipe.params
    print(f"checkpoint: {pipe.directory}")
    m = pipe.method
    print(f"model:      {pipe.name} (method {m.name}, family {m.family})")
    print(f"parameters: {params:,} ({params / 1e6:.2f} M)")
    print(f"step:       {pipe.step}")
    print(f"data:       {pipe.cfg.data.name} ({pipe.cfg.data.channels}×{pipe.cfg.data.resolution}², "
          f"{pipe.num_classes} classes)")
    a = cost_anatomy(pipe, batch=2)
    print(f"sampling:   {a.total:.4g} GFLOPs per image at the recipe's sampler settings "
          "(latent space, guidance included), by unit and part:")
    for i, u in enumerate(a.units, 1):
        print(f"  unit {i:>3}: " + "  ".join(f"{p} {u[p]:.4f}" for p in PARTS))
    print("  all:      " + "  ".join(f"{p} {a.part(p):.4f} ({a.part(p) / a.total:.0%})" for p in PARTS))
    print("config:")
    print(textwrap.indent(config_to_yaml(pipe.cfg), "  "))
    return 0
