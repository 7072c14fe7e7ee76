"""Cost of generation: FLOPs of a whole sampling call and its wall-clock time.

One protocol for every caller (``ecar bench``, ``ecar demo``, ``benchmarks/cost_digits.py``)
and every model: :func:`measure_cost` with its defaults.

* **Batch.** Every model is measured on :data:`TIMING_BATCH` images per sampling call
  (labels cycling over the classes), the same batch for the FLOP count and for timing.
  FLOPs per image do not depend on the batch anyway (every counted op is per image;
  tests/test_cost.py checks it), time per image does — which is why the batch is fixed.
* **FLOPs** are counted with PyTorch's ``FlopCounterMode`` over one full call of the
  method's generation loop, guidance included, in latent space (decoding excluded):
  matmuls, convolutions and attention; elementwise work is not counted, as in the papers we
  compare with. Attention is counted on every device: importing this module imports
  :mod:`ecar.eval.flops`, which gives the CPU SDPA kernels (which torch leaves at 0) the
  formula torch uses for the CUDA ones — 2·B·H·N_q·N_k·d for Q·Kᵀ plus the same for the
  weights·V, a mask does not reduce it.
* **Time** is the median wall-clock time of :data:`TIMING_REPEATS` calls after
  :data:`TIMING_WARMUP` untimed warm-up calls, divided by the batch, with torch's thread
  count as it is (recorded in :class:`Cost`; set it, e.g. ``OMP_NUM_THREADS``, before the
  run, not here). CUDA work is synchronised before and after each call.

Timing needs a quiet machine: other processes competing for the cores (training runs,
tests, a second benchmark) inflate the numbers and the ratios between models. Check the
load (``uptime``) before timing runs whose numbers you mean to publish.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ecar.eval.flops  # noqa: F401  (registers the attention FLOP formulas torch lacks)
from ecar.config import Config
from ecar.generate import labels_for
from ecar.methods import method_of
from ecar.samplers import SampleConfig

TIMING_BATCH = 64
"""Images per sampling call for FLOP counting and timing, the same for every model."""
TIMING_REPEATS = 5
"""Timed sampling calls; the median is reported."""
TIMING_WARMUP = 2
"""Untimed sampling calls before the timed ones."""


@dataclass
class Cost:
    gflops_per_image: float
    seconds_per_image: float
    batch: int
    repeats: int
    warmup: int = TIMING_WARMUP
    threads: int = field(default_factory=torch.get_num_threads)

    def as_dict(self) -> dict:
        return {
            "gflops_per_image": self.gflops_per_image,
            "seconds_per_image": self.seconds_per_image,
            "cost_batch": self.batch,
            "cost_repeats": self.repeats,
            "cost_warmup": self.warmup,
            "cost_threads": self.threads,
        }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sampling_call(model: nn.Module, cfg: Config, sample: SampleConfig | None, batch: int):
    """``run(seed)``: one generation call of ``batch`` images (labels cycling over classes)."""
    if batch < 1:
        raise ValueError(f"cost batch must be >= 1, got {batch}")
    sample = sample or cfg.sample
    method = method_of(cfg.model)
    device = next(model.parameters()).device
    labels = labels_for(batch, cfg.data.num_classes).to(device)

    def run(seed: int) -> None:
        method.generate(model, sample, labels, torch.Generator(device=device).manual_seed(seed))

    return run, device


@torch.no_grad()
def count_flops(
    model: nn.Module, cfg: Config, sample: SampleConfig | None = None, batch: int = TIMING_BATCH,
) -> float:
    """GFLOPs per generated image of one sampling call of ``batch`` images (latent space)."""
    run, _ = _sampling_call(model, cfg, sample, batch)
    with FlopCounterMode(display=False) as counter:
        run(0)
    return counter.get_total_flops() / batch / 1e9


@torch.no_grad()
def time_sampling(
    model: nn.Module,
    cfg: Config,
    sample: SampleConfig | None = None,
    batch: int = TIMING_BATCH,
    repeats: int = TIMING_REPEATS,
    warmup: int = TIMING_WARMUP,
) -> float:
    """Median seconds per image of a sampling call of ``batch`` images (latent space)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"timing needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
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
    model: nn.Module,
    cfg: Config,
    sample: SampleConfig | None = None,
    batch: int = TIMING_BATCH,
    repeats: int = TIMING_REPEATS,
    warmup: int = TIMING_WARMUP,
) -> Cost:
    """FLOPs and time per image at the given (default: the recipe's) sampler settings.

    Callers that compare models use the defaults (the module's protocol); ``batch``,
    ``repeats`` and ``warmup`` are there for tests and explicit experiments.
    """
    was_training = model.training
    model.eval()
    try:
        gflops = count_flops(model, cfg, sample, batch=batch)
        seconds = time_sampling(model, cfg, sample, batch=batch, repeats=repeats, warmup=warmup)
    finally:
        model.train(was_training)
    return Cost(gflops, seconds, batch, repeats, warmup)
