"""Batched, seeded image generation for any method (training previews, CLI, eval, demo)."""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from ecar.config import Config, ConfigError
from ecar.device import available_memory
from ecar.engine.speculative import SpeculativeStats
from ecar.methods import method_of
from ecar.samplers import SampleConfig

__all__ = ["check_draft_pair", "check_generation_fits", "generate_images", "generation_bytes", "labels_for"]


def generation_bytes(cfg: Config, n: int, return_stages: bool = False) -> int:
    """Host memory that :func:`generate_images` and its callers hold for ``n`` images at the
    end: the decoded float32 batches and their concatenation (2 × 4 bytes per value), the
    uint8 copy written to disk (1 byte) and the label (8 bytes); stages about double it."""
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


def labels_for(n: int, num_classes: int, classes: list[int] | None = None) -> torch.Tensor:
    """``n`` labels cycling through ``classes`` (default: every class) -> (n,) long."""
    pool = list(range(num_classes)) if not classes else list(classes)
    bad = [c for c in pool if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are out of range: this model has classes 0..{num_classes - 1}")
    return torch.tensor(pool, dtype=torch.long)[torch.arange(n) % len(pool)]


def check_draft_pair(target: Config, draft: Config) -> None:
    """Raise :class:`ConfigError` unless ``draft`` can propose tokens for ``target``
    (speculative decoding): the same method, data, autoencoder (so the same latents) and
    token layout (patch, hence token count and size)."""
    pairs = {"method": (method_of(target.model).name, method_of(draft.model).name),
             "data.name": (target.data.name, draft.data.name),
             "data.resolution": (target.data.resolution, draft.data.resolution),
             "data.channels": (target.data.channels, draft.data.channels),
             "data.num_classes": (target.data.num_classes, draft.data.num_classes),
             "autoencoder": (dataclasses.asdict(target.autoencoder), dataclasses.asdict(draft.autoencoder)),
             "model.patch": (getattr(target.model, "patch", None), getattr(draft.model, "patch", None))}
    diff = [f"{k}: target {a!r}, draft {b!r}" for k, (a, b) in pairs.items() if a != b]
    if diff:
        raise ConfigError("the draft checkpoint cannot propose tokens for the target: they differ in "
                          + "; ".join(diff) + ". Use a draft trained on the same data with the same "
                          "method, autoencoder and token layout")


@torch.no_grad()
def generate_images(
    model: nn.Module,
    cfg: Config,
    autoencoder: nn.Module,
    labels: torch.Tensor,
    sample: SampleConfig | None = None,
    seed: int = 0,
    batch_size: int = 256,
    progress: bool = False,
    return_stages: bool = False,
    on_unit: Callable[[int, torch.Tensor], None] | None = None,
    draft: nn.Module | None = None,
) -> dict:
    """Generate one image per label with ``cfg.model``'s method.

    ``sample`` defaults to the recipe's ``cfg.sample``. Returns ``images`` (N, C, H, W) in
    [-1, 1] on the CPU and, with ``return_stages``, ``stages``: a list over units of
    (N, C, H_s, W_s) decoded images (coarse to fine).

    ``on_unit(i, images)`` is called as soon as unit i of a batch exists, with that unit's
    decoded images (N_b, C, H_i, W_i) on the CPU: once per unit when the labels fit one
    batch (``ecar serve`` passes ``batch_size=len(labels)``), else once per batch and unit.

    With a ``draft`` network (checked by :func:`check_draft_pair`) the samples are the
    target's, drawn by exact speculative decoding (:meth:`ecar.methods.Method.speculative`,
    docs/speculative.md); ``speculative`` then holds its statistics (acceptance rate, tokens
    per target pass, target and draft calls, wall-clock seconds of the sampling calls).
    """
    if draft is not None and (return_stages or on_unit is not None):
        raise ConfigError("speculative decoding (a draft) yields no per-unit results: drop the stages output")
    check_generation_fits(cfg, len(labels), return_stages, where="n")
    sample = sample or cfg.sample
    method = method_of(cfg.model)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    images, stages = [], []
    was_training = model.training
    model.eval()
    chunks = list(torch.split(labels, batch_size))
    stats = SpeculativeStats()

    def decoded(i: int, latents: torch.Tensor) -> None:
        on_unit(i, autoencoder.decode(latents).float().cpu())

    try:  # the callback may raise (a cancelled request): the model's mode is restored anyway
        for y in tqdm(chunks, desc="sampling", disable=not progress or len(chunks) < 2, leave=False):
            if draft is not None:
                start = time.perf_counter()
                out = method.speculative(model, draft.eval(), sample, y.to(device), gen)
                out["stats"].seconds = time.perf_counter() - start
                stats.add(out["stats"])
            else:
                out = method.generate(model, sample, y.to(device), gen, return_stages=return_stages,
                                      on_unit=decoded if on_unit is not None else None)
            images.append(autoencoder.decode(out["latents"]).float().cpu())
            if return_stages:
                stages.append([autoencoder.decode(s).float().cpu() for s in out["stages"]])
    finally:
        model.train(was_training)
    result = {"images": torch.cat(images)}
    if draft is not None:
        result["speculative"] = stats.as_dict()
    if return_stages:
        result["stages"] = [torch.cat([b[i] for b in stages]) for i in range(len(stages[0]))]
    return result
