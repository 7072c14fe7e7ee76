"""Training speed per step: images encoded on the fly against a latent cache (issue 14).

The 64×64 latent-space recipes (``configs/imagefolder64_{ecar,dit}.yaml``) trained by the
real trainer for a few steps twice — from images, every batch encoded by TAEF2, and from
``ecar cache-latents``' cache of the same images — and the median training images/s of the
logged intervals after the first (``metrics.jsonl``). The images are the procedural
``shapes`` set rendered at 64×64 (no download; ``data.hflip`` doubles it as the recipes
ask). On CPU in float32 (bf16 autocast is slower on CPU), with a smaller batch than the
recipes' 128 so a step takes seconds, not minutes: the per-step ratio hardly depends on it.
A tiny network is measured too, to show where the cache matters most: when the network is
cheap next to the encoder. Time only on a quiet machine.

    ECAR_TAEF2_PATH=DIR python benchmarks/latent_cache_speed.py \\
        --out benchmarks/results/latent_cache_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ecar.config import load_config
from ecar.latent_cache import cache_latents
from ecar.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data.name=shapes", "data.resolution=64", "data.shapes_size=256", "data.num_workers=0",
        "train.precision=fp32", "train.tensorboard=false", "train.ckpt_every=0", "train.sample_every=0",
        "train.warmup_steps=1"]
VARIANTS = [
    ("E-CAR-S (imagefolder64_ecar)", "imagefolder64_ecar.yaml", []),
    ("DiT-S (imagefolder64_dit)", "imagefolder64_dit.yaml", []),
    ("tiny E-CAR (hidden 64, depth 1, head 64x1)", "imagefolder64_ecar.yaml",
     ["model.hidden=64", "model.depth=1", "model.heads=2", "model.head_width=64", "model.head_depth=1",
      "model.head_heads=2"]),
]


def _images_per_s(cfg, out: Path) -> float:
    train(cfg, out, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "images_per_s" in r]
    return statistics.median(r["images_per_s"] for r in rows[1:])  # the first interval warms up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/latent_cache_speed.json"))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="training steps per measurement (logged every 2)")
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = [*DATA, f"train.batch_size={args.batch}", f"train.max_steps={args.steps}", "train.log_every=2"]
        cache = tmp / "cache"
        t0 = time.perf_counter()
        manifest = cache_latents(load_config(ROOT / "configs" / "imagefolder64_ecar.yaml", common), cache,
                                 progress=False)
        encode_s = time.perf_counter() - t0
        print(f"cached {manifest['count']} latents in {encode_s:.1f} s", flush=True)
        for i, (name, recipe, over) in enumerate(VARIANTS):
            images = load_config(ROOT / "configs" / recipe, [*common, *over])
            latents = load_config(ROOT / "configs" / recipe, [*common, *over, f"data.name=latents:{cache}"])
            on_the_fly = _images_per_s(images, tmp / f"img{i}")
            cached = _images_per_s(latents, tmp / f"lat{i}")
            rows.append({"name": name, "recipe": recipe, "overrides": over, "batch": args.batch,
                         "steps": args.steps, "images_per_s_encoding": on_the_fly,
                         "images_per_s_cache": cached, "speedup": cached / on_the_fly})
            print(f"{name}: {on_the_fly:.2f} img/s encoding on the fly, {cached:.2f} from the cache "
                  f"({cached / on_the_fly:.2f}x)", flush=True)
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "load_at_start": load_at_start, "data": DATA,
        "cache": {"count": manifest["count"], "latent_shape": manifest["latent_shape"],
                  "encode_seconds": encode_s, "encode_images_per_s": manifest["count"] / encode_s},
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
