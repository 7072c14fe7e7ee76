"""Cost of generation: FLOPs of a whole sampling call and its wall-clock time.

FLOPs are counted with PyTorch's ``FlopCounterMode`` (matmuls, convolutions and attention
kernels; elementwise work is not counted, as in the papers we compare with) over one full
call of the family's generation loop, guidance included. Time is the median of several
repeats after warm-up calls.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ecar.config import Config, SampleConfig
from ecar.models.registry import family_of


@dataclass
class Cost:
    gflops_per_image: float
    seconds_per_image: float
    batch: int
    repeats: int

    def as_dict(self) -> dict:
        return {
            "gflops_per_image": self.gflops_per_image,
            "seconds_per_image": self.seconds_per_image,
            "cost_batch": self.batch,
            "cost_repeats": self.repeats,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sampling_call(model: nn.Module, cfg: Config, sample: SampleConfig | None, batch: int):
    """``run(seed)``: one generation call of ``batch`` images (labels cycling over classes)."""
    from ecar.engine.api import labels_for

    sample = sample or cfg.sample
    fam = family_of(cfg.model)
    device = next(model.parameters()).device
    labels = labels_for(batch, cfg.data.num_classes).to(device)

    def run(seed: int) -> None:
        fam.generate(model, cfg, labels, sample, torch.Generator(device=device).manual_seed(seed))

    return run, device


@torch.no_grad()
def count_flops(model: nn.Module, cfg: Config, sample: SampleConfig | None = None, batch: int = 8) -> float:
    """GFLOPs per generated image of one sampling call (latent space; decoding excluded)."""
    run, _ = _sampling_call(model, cfg, sample, batch)
    with FlopCounterMode(display=False) as counter:
        run(0)
    return counter.get_total_flops() / batch / 1e9


@torch.no_grad()
def time_sampling(
    model: nn.Module,
    cfg: Config,
    sample: SampleConfig | None = None,
    batch: int = 64,
    repeats: int = 5,
    warmup: int = 2,
) -> float:
    """Median seconds per image of a batched sampling call (latent space)."""
    run, device = _sampling_call(model, cfg, sample, batch)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        run(i)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def measure_cost(
    model: nn.Module, cfg: Config, sample: SampleConfig | None = None, batch: int = 64,
    repeats: int = 5, warmup: int = 2,
) -> Cost:
    """FLOPs and time per image at the given (default: the recipe's) sampler settings."""
    was_training = model.training
    model.eval()
    try:
        gflops = count_flops(model, cfg, sample, batch=min(batch, 8))
        seconds = time_sampling(model, cfg, sample, batch=batch, repeats=repeats, warmup=warmup)
    finally:
        model.train(was_training)
    return Cost(gflops, seconds, batch, repeats)
