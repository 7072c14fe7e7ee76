"""Labels, memory checks and the batched, seeded sampling loop behind :class:`ecar.Pipeline`.

Everything here is the pipeline's own machinery; callers use :class:`ecar.Pipeline`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ecar.autoencoders import Autoencoder
from ecar.config import Config, ConfigError
from ecar.device import available_memory
from ecar.engine.speculative_cost import GammaMemory
from ecar.engine.speculative_rules import SpeculativeStats
from ecar.methods import Method
from ecar.samplers import SampleConfig

__all__ = ["Sampled", "check_generation_fits", "generation_bytes", "labels_for", "sample_batches"]

UnitHook = Callable[[int, torch.Tensor], None]
"""``on_unit(i, images)``: called as soon as unit i of a batch exists."""


def generation_bytes(cfg: Config, n: int, return_stages: bool = False) -> int:
    """Host memory that a generation of ``n`` images holds at the end: the decoded float32
    batches and their concatenation (2 × 4 bytes per value), the uint8 copy a caller writes
    to disk (1 byte) and the label (8 bytes); stages about double it."""
    d = cfg.data
    values = (d.channels or 3) * (d.resolution or 1) ** 2
    per_image = 9 * values + 8
    return int(n) * per_image * (2 if return_stages else 1)


def check_generation_fits(cfg: Config, n: int, return_stages: bool = False, where: str = "--n") -> None:
    """Raise :class:`ConfigError` with an estimate when ``n`` images cannot fit in the host
    memory available now: refused before any work, instead of a ``MemoryError`` (or the
    machine swapping) minutes later."""
    need, free = generation_bytes(cfg, n, return_stages), available_memory()
    if free is not None and need > free:
        gib = 2**30
        raise ConfigError(
            f"{where}={n} images would need about {need / gib:,.1f} GiB of memory "
            f"({generation_bytes(cfg, 1, return_stages):,} bytes per image) but about {free / gib:,.1f} GiB "
            "is available: ask for fewer images per call (and vary --seed across calls)"
        )


def labels_for(n: int, num_classes: int, classes: Sequence[int] | None = None) -> torch.Tensor:
    """``n`` labels cycling through ``classes`` (default: every class) -> (n,) long."""
    pool = list(range(num_classes)) if not classes else list(classes)
    bad = [c for c in pool if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are out of range: this model has classes 0..{num_classes - 1}")
    return torch.tensor(pool, dtype=torch.long)[torch.arange(n) % len(pool)]


@dataclass
class Sampled:
    """What :func:`sample_batches` returns: decoded images (N, C, H, W) in [-1, 1] on the CPU,
    per unit the decoded images (with stages), speculative decoding's statistics (with a
    draft) and the wall-clock seconds of the call."""

    images: torch.Tensor
    stages: list[torch.Tensor] | None
    speculative: dict[str, Any] | None
    seconds: float


@torch.no_grad()
def sample_batches(model: nn.Module, method: Method[Any, Any], autoencoder: Autoencoder, labels: torch.Tensor,
                   sample: SampleConfig, seed: int, batch_size: int, progress: bool = False,
                   return_stages: bool = False, on_unit: UnitHook | None = None,
                   draft: nn.Module | None = None, memory: GammaMemory | None = None) -> Sampled:
    """One image per label, ``batch_size`` labels per call of the method's loop, one generator
    seeded with ``seed`` for the whole call (so the images depend on ``batch_size``), decoded.

    ``on_unit(i, images)`` hears unit i's decoded images (N_b, C, H_i, W_i) on the CPU as soon
    as they exist: once per unit when the labels fit one batch, else once per batch and unit.
    With a ``draft`` network the samples are drawn by the method's exact speculative decoding
    (:attr:`~ecar.methods.Method.drafting`); ``speculative`` then holds its statistics, whose
    ``seconds`` are those of the sampling calls alone, and ``memory`` (default: one for this
    call) carries what ``gamma="auto"`` learns from batch to batch and call to call. The
    model's train/eval mode is restored even when ``on_unit`` raises (a cancelled request).
    """
    if draft is not None and (return_stages or on_unit is not None):
        raise ConfigError("speculative decoding (a draft) yields no per-unit results: drop the stages output")
    drafting = method.drafting
    if draft is not None and drafting is None:
        raise ConfigError(f"method {method.name} cannot be drafted")
    start = time.perf_counter()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    images, stages = [], []
    was_training = model.training
    model.eval()
    chunks = list(torch.split(labels, batch_size))
    stats = SpeculativeStats()
    memory = memory if memory is not None else GammaMemory()

    def decoded(i: int, latents: torch.Tensor) -> None:
        assert on_unit is not None
        on_unit(i, autoencoder.decode(latents).float().cpu())

    try:  # the callback may raise (a cancelled request): the model's mode is restored anyway
        for y in tqdm(chunks, desc="sampling", disable=not progress or len(chunks) < 2, leave=False):
            if draft is not None and drafting is not None:
                t0 = time.perf_counter()
                out = drafting.speculative(model, draft.eval(), sample, y.to(device), gen, memory)
                out["stats"].seconds = time.perf_counter() - t0
                stats.add(out["stats"])
            else:
                out = method.generate(model, sample, y.to(device), gen, return_stages=return_stages,
                                      on_unit=decoded if on_unit is not None else None)
            images.append(autoencoder.decode(out["latents"]).float().cpu())
            if return_stages:
                stages.append([autoencoder.decode(s).float().cpu() for s in out["stages"]])
    finally:
        model.train(was_training)
    per_unit = [torch.cat([b[i] for b in stages]) for i in range(len(stages[0]))] if return_stages else None
    return Sampled(torch.cat(images), per_unit, stats.as_dict() if draft is not None else None,
                   time.perf_counter() - start)
