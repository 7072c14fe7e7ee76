"""The sampler settings a bench evaluates for a model (module docstring of :mod:`ecar.bench.run`):
the shipped one, then sampler × multiplier of the model's own shipped step counts."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from ecar.pipeline import Pipeline
from ecar.samplers import SAMPLER_NAMES

__all__ = ["DEFAULT_SAMPLERS", "DEFAULT_SEEDS", "DEFAULT_SWEEP", "sweep_settings"]

DEFAULT_SWEEP: tuple[float, ...] = (0.1, 0.2, 0.5, 1.0, 2.0)
"""Multipliers of each model's shipped step counts."""
DEFAULT_SAMPLERS: tuple[str, ...] = ("euler", "heun")
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)


def sweep_settings(pipe: Pipeline, step_sweep: Sequence[float], samplers: Sequence[str] | None = None) -> list[dict]:
    """Sampler settings to evaluate: the shipped one first, then sampler × step multiplier.

    ``samplers`` defaults to the shipped sampler only. Returns a list of ``{"setting":
    "shipped" | "<sampler> steps=…", "scale": factor or None, "sample": the method's sample
    settings}`` with duplicates (after rounding) removed.
    """
    shipped = pipe.sample
    samplers = list(dict.fromkeys(samplers or [shipped.sampler]))
    for name in samplers:
        if name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLER_NAMES)}")

    def key(sampler: str, counts: int | list[int]) -> tuple:
        return (sampler, *counts) if isinstance(counts, list) else (sampler, counts)

    seen = {key(shipped.sampler, pipe.step_counts(shipped))}
    out: list[dict[str, Any]] = [{"setting": "shipped", "scale": None, "sample": dataclasses.replace(shipped)}]
    factors = sorted(float(v) for v in step_sweep)
    for f in factors:
        if not f > 0:
            raise ValueError(f"step_sweep factors must be > 0, got {f}")
    for name in samplers:
        for f in factors:
            sample = dataclasses.replace(pipe.scale_steps(shipped, f), sampler=name)
            counts = pipe.step_counts(sample)
            k = key(name, counts)
            if k in seen:
                continue
            seen.add(k)
            label = ",".join(str(c) for c in counts) if isinstance(counts, list) else str(counts)
            out.append({"setting": f"{name} steps={label}", "scale": f, "sample": sample})
    return out
