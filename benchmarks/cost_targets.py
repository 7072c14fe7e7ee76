#!/usr/bin/env python
"""E-CAR's cost targets against DiT (issue 25, points 2 and 3), counted, not timed.

For the Fashion-MNIST DiT recipe and each E-CAR variant (``configs/fashion_ecar.yaml`` with
overrides; the first is the recipe as it ships): FLOPs from PyTorch's counter
(:mod:`ecar.flops` adds attention), per image, at random initialisation (FLOPs do not
depend on the weights):

* ``head_call``: one head call over the last stage's tokens (the per-step cost of the
  finest stage), and ``head_call_over_dit_forward``: that ÷ one DiT forward (one velocity
  evaluation of the whole image, no guidance) — target ≤ 0.35;
* ``head_condition``: projecting the last stage's conditions, once per stage;
* ``train``: one training step's forward + backward of the objective, per image, and
  ``train_over_dit``: ÷ DiT's — target ≤ 1.5 (the same backbone: hidden, depth, heads);
* ``sampling``: the anatomy of a sampling call at the recipe's shipped settings
  (:func:`ecar.eval.cost.cost_anatomy`: per stage, backbone / head / guidance).

    python benchmarks/cost_targets.py --out benchmarks/results/fashion_cost_targets.json \\
        --variant shipped= --variant old=model.ar_input=upsampled,model.head_cond=token,...
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import ecar.flops  # noqa: F401  (attention FLOPs)
from ecar.autoencoders import IdentityAutoencoder
from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.eval.cost import cost_anatomy
from ecar.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
SPEC = LatentSpec(1, 32, 10)  # Fashion-MNIST padded to 32×32, grey, 10 classes
BATCH = 8


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as c:
        fn()
    return c.get_total_flops() / BATCH / 1e9


def _build(recipe: str, overrides: list[str]):
    cfg = load_config(ROOT / "configs" / recipe, overrides)
    cfg.data.channels, cfg.data.resolution, cfg.data.num_classes = SPEC.channels, SPEC.size, SPEC.num_classes
    torch.manual_seed(0)
    model, method = build_model(cfg, SPEC)
    return cfg, model, method


def train_flops(cfg, model, method) -> float:
    """Forward + backward of the recipe's objective, GFLOPs per image."""
    objective = method.objective(model, cfg.flow)
    x, y = torch.randn(BATCH, SPEC.channels, SPEC.size, SPEC.size), torch.arange(BATCH) % SPEC.num_classes
    return _flops(lambda: objective(x, y, torch.Generator().manual_seed(0))["loss"].backward())


def split_overrides(text: str) -> list[str]:
    return [p for p in re.split(r",(?![^\[]*\])", text) if p]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", action="append", default=[], help="NAME=OVERRIDES (comma-separated)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/fashion_cost_targets.json"))
    args = ap.parse_args()
    variants = args.variant or ["shipped="]

    dcfg, dit, dmethod = _build("fashion_dit.yaml", [])
    dit_train = train_flops(dcfg, dit, dmethod)
    dit.eval()
    with torch.no_grad():
        x = torch.randn(BATCH, SPEC.channels, SPEC.size, SPEC.size)
        dit_forward = _flops(lambda: dit(x, torch.rand(BATCH), torch.zeros(BATCH, dtype=torch.long)))
        dit_sampling = cost_anatomy(Pipeline(dit, dcfg, IdentityAutoencoder(SPEC.channels)), batch=BATCH).as_dict()
    doc = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "targets": {"head_call_over_dit_forward": 0.35, "train_over_dit": 1.5},
        "dit": {"recipe": "configs/fashion_dit.yaml", "forward": dit_forward, "train": dit_train,
                "sampling": dit_sampling, "params": sum(p.numel() for p in dit.parameters())},
        "ecar": [],
    }
    for spec in variants:
        name, _, text = spec.partition("=")
        overrides = split_overrides(text)
        cfg, model, method = _build("fashion_ecar.yaml", overrides)
        tr = train_flops(cfg, model, method)
        model.eval()
        last, g = model.num_stages - 1, model.grids[-1]
        with torch.no_grad():
            z = torch.randn(BATCH, g * g, cfg.model.hidden)
            proj = _flops(lambda: model.head_condition(z))
            zc = model.head_condition(z)
            xt = torch.randn(BATCH, g * g, model.token_dim)
            call = _flops(lambda: model.velocity(xt, torch.full((BATCH,), 0.5), zc, last))
            sampling = cost_anatomy(Pipeline(model, cfg, IdentityAutoencoder(SPEC.channels)), batch=BATCH).as_dict()
        m = cfg.model
        row = {
            "variant": name, "overrides": overrides,
            "model": {k: getattr(m, k) for k in ("hidden", "depth", "heads", "ar_input", "head", "head_cond",
                                                 "head_width", "head_depth", "head_mlp_ratio")},
            "params": sum(p.numel() for p in model.parameters()),
            "head_call": call, "head_call_over_dit_forward": call / dit_forward,
            "head_condition": proj, "train": tr, "train_over_dit": tr / dit_train,
            "sampling_settings": {"sampler": cfg.sample.sampler, "stage_steps": cfg.sample.stage_steps,
                                  "cfg": cfg.sample.cfg, "cfg_interval": cfg.sample.cfg_interval},
            "sampling": sampling,
        }
        doc["ecar"].append(row)
        print(f"{name}: head call {call:.4f} GFLOPs = {call / dit_forward:.2f} DiT forwards; "
              f"training {tr:.4f} GFLOPs/img = {tr / dit_train:.2f}x DiT; sampling {sampling['total']:.4f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
