"""Cost of generation: FLOPs of a whole sampling call and its wall-clock time.

One protocol for every caller (``ecar bench``, ``ecar demo``, ``benchmarks/cost_digits.py``)
and every model: :func:`measure_cost` with its defaults. Every function takes the model's
:class:`~ecar.pipeline.Pipeline` and times or counts its latent-space call
(:meth:`~ecar.pipeline.Pipeline.latent_call`).

* **Batch.** Every model is measured on :data:`TIMING_BATCH` images per sampling call
  (labels cycling over the classes), the same batch for the FLOP count and for timing.
  FLOPs per image do not depend on the batch anyway (every counted op is per image;
  tests/test_cost.py checks it), time per image does — which is why the batch is fixed.
* **FLOPs** are counted with PyTorch's ``FlopCounterMode`` over one full call of the
  method's generation loop, guidance included, in latent space (decoding excluded):
  matmuls, convolutions and attention; elementwise work is not counted, as in the papers we
  compare with (:meth:`ecar.pipeline.Pipeline.gflops`). Attention is counted on every device:
  :mod:`ecar.flops` gives the CPU SDPA kernels (which torch leaves at 0) the formula torch
  uses for the CUDA ones — 2·B·H·N_q·N_k·d for Q·Kᵀ plus the same for the weights·V, a mask
  does not reduce it.
* **Time** is the median wall-clock time of :data:`TIMING_REPEATS` calls after
  :data:`TIMING_WARMUP` untimed warm-up calls, divided by the batch, with torch's thread
  count as it is (recorded in :class:`Cost`; set it, e.g. ``OMP_NUM_THREADS``, before the
  run, not here). CUDA work is synchronised before and after each call.

Timing needs a quiet machine: other processes competing for the cores (training runs,
tests, a second benchmark) inflate the numbers and the ratios between models. Check the
load (``uptime``) before timing runs whose numbers you mean to publish.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ecar.pipeline import Pipeline
from ecar.samplers import SampleConfig

__all__ = ["Anatomy", "Cost", "PARTS", "TIMING_BATCH", "TIMING_REPEATS", "TIMING_WARMUP", "cost_anatomy",
           "count_flops", "measure_cost", "median_seconds", "time_sampling"]

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
    anatomy: Anatomy | None = None
    """Where the FLOPs go (:func:`cost_anatomy`), when :func:`measure_cost` was asked for it."""

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


def count_flops(pipe: Pipeline, sample: SampleConfig | None = None, batch: int = TIMING_BATCH) -> float:
    """GFLOPs per generated image of one sampling call of ``batch`` images (latent space;
    :meth:`ecar.pipeline.Pipeline.gflops`)."""
    return pipe.gflops(sample, batch)


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed
    ones, the device synchronised before and after each (the protocol of every timing here)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"timing needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def time_sampling(
    pipe: Pipeline,
    sample: SampleConfig | None = None,
    batch: int = TIMING_BATCH,
    repeats: int = TIMING_REPEATS,
    warmup: int = TIMING_WARMUP,
) -> float:
    """Median seconds per image of a sampling call of ``batch`` images (latent space)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"timing needs repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    run = pipe.latent_call(sample, batch)
    calls = iter(range(warmup + repeats))
    return median_seconds(lambda: run(next(calls)), pipe.device, repeats, warmup) / batch


def measure_cost(
    pipe: Pipeline,
    sample: SampleConfig | None = None,
    batch: int = TIMING_BATCH,
    repeats: int = TIMING_REPEATS,
    warmup: int = TIMING_WARMUP,
    anatomy: bool = False,
) -> Cost:
    """FLOPs and time per image at the given (default: the recipe's) sampler settings.

    Callers that compare models use the defaults (the module's protocol); ``batch``,
    ``repeats`` and ``warmup`` are there for tests and explicit experiments. ``anatomy``:
    also split the FLOPs (:func:`cost_anatomy`, whose total is the count reported).
    """
    model = pipe.model
    was_training = model.training
    model.eval()
    split = None
    try:
        if anatomy:
            split = cost_anatomy(pipe, sample, batch=batch)
            gflops = split.total
        else:
            gflops = count_flops(pipe, sample, batch=batch)
        seconds = time_sampling(pipe, sample, batch=batch, repeats=repeats, warmup=warmup)
    finally:
        model.train(was_training)
    return Cost(gflops, seconds, batch, repeats, warmup, anatomy=split)


PARTS = ("backbone", "head", "guidance")
"""The parts of :func:`cost_anatomy`: ``backbone`` — every network call outside the head (the AR
transformer, or the whole network of a method without a head, e.g. DiT), ``head`` — the
per-token head (its calls and the projection of its conditions), ``guidance`` — what the
null-label branch of classifier-free guidance adds to both."""


class _PartCounter(FlopCounterMode):
    """FLOP counter that also splits the count by unit (the ``on_unit`` calls of a method's
    generation loop) and by part: FLOPs counted while any module of ``head`` runs are the
    head's, the rest the backbone's."""

    def __init__(self, head: nn.Module | None):
        super().__init__(display=False)
        self.head_ids = {id(m) for m in head.modules()} if head is not None else set()
        self.units: list[dict[str, int]] = []
        self._unit_start = self._head_flops = self._depth = self._head_start = 0
        self._hooks: list = []

    def __enter__(self):
        out = super().__enter__()
        self._hooks = [nn.modules.module.register_module_forward_pre_hook(self._pre),
                       nn.modules.module.register_module_forward_hook(self._post)]
        return out

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        return super().__exit__(*exc)

    def _pre(self, module, args):
        if id(module) in self.head_ids:
            if self._depth == 0:
                self._head_start = self.get_total_flops()
            self._depth += 1

    def _post(self, module, args, out):
        if id(module) in self.head_ids:
            self._depth -= 1
            if self._depth == 0:
                self._head_flops += self.get_total_flops() - self._head_start

    def on_unit(self, i: int, latents: torch.Tensor) -> None:
        total = self.get_total_flops()
        unit = total - self._unit_start
        self.units.append({"backbone": unit - self._head_flops, "head": self._head_flops})
        self._unit_start, self._head_flops = total, 0


@dataclass
class Anatomy:
    """GFLOPs per image of one sampling call, split by unit (stage, step or token group, in
    generation order) and by part (:data:`PARTS`). ``units[i][part]``; ``total`` = the sum of
    every entry = :func:`count_flops` of the same call."""

    units: list[dict[str, float]]
    total: float

    def part(self, name: str) -> float:
        return sum(u[name] for u in self.units)

    def as_dict(self) -> dict:
        return {"total": self.total, "parts": {p: self.part(p) for p in PARTS}, "units": self.units}


@torch.no_grad()
def cost_anatomy(pipe: Pipeline, sample: SampleConfig | None = None, batch: int = TIMING_BATCH) -> Anatomy:
    """Where one sampling call's FLOPs go, per image: each unit's backbone, head and guidance
    branch. The guidance branch is measured, not assumed: the call is counted again with
    guidance off (``cfg = 1``, which drops the null half wherever a method doubles its rows),
    and each unit's difference is its guidance share; the backbone/head split is that of the
    unguided call."""
    sample = sample or pipe.sample
    head = pipe.head()
    counts = []
    for s in (sample, dataclasses.replace(sample, cfg=1.0)):
        counter = _PartCounter(head)
        run = pipe.latent_call(s, batch, on_unit=counter.on_unit)
        with counter:
            run(0)
        rest = counter.get_total_flops() - sum(u["backbone"] + u["head"] for u in counter.units)
        if rest:  # work after the last unit's result (none in the shipped loops)
            counter.units.append({"backbone": rest - counter._head_flops, "head": counter._head_flops})
        counts.append(counter)
    guided, plain = counts
    if len(guided.units) != len(plain.units):
        raise RuntimeError("the guided and unguided calls produced different numbers of units")
    scale = 1 / batch / 1e9
    units = [{"backbone": p["backbone"] * scale, "head": p["head"] * scale,
              "guidance": (g["backbone"] + g["head"] - p["backbone"] - p["head"]) * scale}
             for g, p in zip(guided.units, plain.units)]
    return Anatomy(units, guided.get_total_flops() * scale)
