"""Training and sampling throughput per method and size, with a model-FLOPs-utilisation estimate.

For each spec (a recipe plus overrides, measured on random latents of the recipe's latent
shape, so neither a dataset nor autoencoder weights are needed):

* **training images/s**: AdamW steps of the recipe's objective on a fixed batch, after
  warm-up steps, wall-clock per step (CUDA synchronised), with the recipe's precision
  (bf16 autocast on CUDA when ``--precision bf16``);
* **training GFLOPs per image**: one forward + backward counted by ``FlopCounterMode``
  (attention included, :mod:`ecar.flops`);
* **sampling images/s and GFLOPs per image** at the recipe's shipped sampler settings, by
  :func:`ecar.eval.cost.measure_cost` (the protocol of ``ecar bench``);
* **MFU** = achieved FLOP/s ÷ the device's peak dense bf16 FLOP/s, for known GPUs only
  (:data:`PEAK_TFLOPS`); ``null`` on CPU, where no honest peak is known.

Time only on a quiet machine (see benchmarks/README.md). CPU results:

    python benchmarks/throughput.py --out benchmarks/results/throughput_cpu.json

On a GPU (bf16, the B-size models at 256×256 in TAEF2 latent space):

    python benchmarks/throughput.py --gpu-set --precision bf16 --out benchmarks/results/throughput_h100.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import ecar.flops  # noqa: F401  (attention FLOPs on every device)
from ecar.autoencoders.taef2 import DOWNSAMPLE, LATENT_CHANNELS
from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.device import pick_device
from ecar.eval.cost import measure_cost, median_seconds
from ecar.autoencoders import IdentityAutoencoder
from ecar.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]

# peak dense bf16 tensor-core TFLOP/s (vendor data sheets, SXM parts)
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}

CPU_SET = [
    # name, recipe, overrides, training batch
    ("fashion DiT (depth 1)", "fashion_dit.yaml", [], 64),
    ("fashion FlowAR mode", "fashion_flowar.yaml", [], 64),
    ("fashion E-CAR", "fashion_ecar.yaml", [], 64),
    ("64px DiT-S (TAEF2 latents)", "imagefolder64_dit.yaml", [], 16),
    ("64px E-CAR-S (TAEF2 latents)", "imagefolder64_ecar.yaml", [], 16),
]
GPU_SET = [
    ("256px DiT-B/2 (TAEF2 latents)", "imagenet256_dit.yaml", ["model.name=dit-b/2"], 64),
    ("256px E-CAR-B (TAEF2 latents)", "imagenet256_ecar.yaml", ["model.name=ecar-b"], 64),
    ("64px DiT-S (TAEF2 latents)", "imagefolder64_dit.yaml", [], 128),
    ("64px E-CAR-S (TAEF2 latents)", "imagefolder64_ecar.yaml", [], 128),
]
PIXEL_DATA = {"fashion": (1, 32, 10)}  # channels, resolution, classes of pixel-space recipes


def _spec(cfg) -> LatentSpec:
    """Latent shape of a recipe without its dataset or weights (identity or TAEF2)."""
    if cfg.autoencoder.name == "taef2":
        res = cfg.data.resolution
        cfg.data.channels, cfg.data.num_classes = 3, cfg.data.num_classes or 1000
        return LatentSpec(LATENT_CHANNELS, res // DOWNSAMPLE, cfg.data.num_classes)
    ch, res, k = next(v for key, v in PIXEL_DATA.items() if cfg.data.name.startswith(key))
    cfg.data.channels, cfg.data.resolution, cfg.data.num_classes = ch, res, k
    return LatentSpec(ch, res, k)


def _peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v * 1e12 for k, v in PEAK_TFLOPS.items() if k in name), None)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on ``device`` for ``precision == "bf16"``, else a no-op context."""
    return (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if precision == "bf16"
            else nullcontext())


def train_gflops_per_image(objective, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, amp=None) -> float:
    """GFLOPs per image of one forward + backward of a training ``objective`` on the batch
    (x, y), counted by ``FlopCounterMode`` (inside ``amp`` when given). Leaves the gradients."""
    with FlopCounterMode(display=False) as counter:
        with amp or nullcontext():
            objective(x, y, gen)["loss"].backward()
    return counter.get_total_flops() / x.shape[0] / 1e9


def measure_training(cfg, spec: LatentSpec, batch: int, device: torch.device, precision: str,
                     steps: int, warmup: int) -> tuple[dict, torch.nn.Module]:
    """Training cost of ``cfg``'s model on random latents of ``spec``: GFLOPs per image of one
    forward + backward, and the median wall-clock time of an AdamW step after ``warmup``
    untimed ones. Returns the row's training fields and the (random-initialised) model."""
    torch.manual_seed(0)
    model, method = build_model(cfg, spec)
    model.to(device)
    objective = method.objective(model, cfg.flow).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, spec.channels, spec.size, spec.size, device=device)
    y = torch.randint(0, spec.num_classes, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    amp = autocast_for(device, precision)

    def step() -> None:
        with amp:
            loss = objective(x, y, gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_gflops = train_gflops_per_image(objective, x, y, gen, amp)
    opt.zero_grad(set_to_none=True)
    step_s = median_seconds(step, device, steps, warmup)
    model.eval()
    peak = _peak(device)
    train_ips = batch / step_s
    return {
        "model": cfg.model.name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "latent": [spec.channels, spec.size, spec.size], "precision": precision,
        "train_batch": batch, "train_step_s": step_s, "train_images_per_s": train_ips,
        "train_gflops_per_image": train_gflops,
        "train_mfu": None if peak is None else train_ips * train_gflops * 1e9 / peak,
    }, model


def measure(name: str, recipe: str, overrides: list[str], batch: int, device: torch.device,
            precision: str, steps: int, warmup: int) -> dict:
    cfg = load_config(ROOT / "configs" / recipe, overrides)
    spec = _spec(cfg)
    train_row, model = measure_training(cfg, spec, batch, device, precision, steps, warmup)
    with autocast_for(device, precision):
        cost = measure_cost(Pipeline(model, cfg, IdentityAutoencoder(spec.channels)))
    peak = _peak(device)
    sample_ips = 1.0 / cost.seconds_per_image
    return {
        "name": name, "recipe": recipe, "overrides": overrides, **train_row,
        "sample_images_per_s": sample_ips, "sample_gflops_per_image": cost.gflops_per_image,
        "sample_mfu": None if peak is None else sample_ips * cost.gflops_per_image * 1e9 / peak,
        "sample_settings": {"sampler": cfg.sample.sampler, "steps": cfg.sample.steps,
                            "stage_steps": getattr(cfg.sample, "stage_steps", None)},
        **{k: v for k, v in cost.as_dict().items() if k.startswith("cost_")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/throughput_cpu.json"))
    ap.add_argument("--gpu-set", action="store_true", help="the GPU specs (B models at 256 px, bf16)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    device = pick_device(args.device)
    load_at_start = os.getloadavg()[0]
    rows = []
    for name, recipe, over, batch in (GPU_SET if args.gpu_set else CPU_SET):
        row = measure(name, recipe, over, batch, device, args.precision, args.steps, args.warmup)
        print(f"{name}: train {row['train_images_per_s']:.1f} img/s ({row['train_gflops_per_image']:.2f} "
              f"GF/img), sample {row['sample_images_per_s']:.1f} img/s ({row['sample_gflops_per_image']:.3f} "
              f"GF/img), MFU {row['train_mfu']} / {row['sample_mfu']}", flush=True)
        rows.append(row)
    meta = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({platform.machine()}, {torch.get_num_threads()} threads)"),
        "torch": torch.__version__, "load_at_start": load_at_start, "peak_tflops": PEAK_TFLOPS,
        "mfu_note": "achieved FLOP/s over the peak dense bf16 tensor-core FLOP/s of the GPU model; "
                    "null on CPU (no honest peak)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
