"""Classifier-free guidance as a wrapper around a conditional velocity function.

v = v_uncond + s·(v_cond − v_uncond) on every channel. The scale may follow a schedule
over sampling progress p in [0, 1] (time for DiT, stage index for E-CAR). At s = 1 the
unconditional branch is skipped, so the result *is* the conditional velocity.
"""

from __future__ import annotations

from typing import Callable

import torch

GUIDANCE_SCHEDULES = ("constant", "linear")
"""Schedules :func:`guidance_scale` accepts."""


def guidance_scale(
    scale: float, schedule: str, progress: float, interval: list[float] | None = None
) -> float:
    """Scale at sampling progress ``progress`` in [0, 1].

    ``constant``: ``scale`` throughout. ``linear``: ramps from 1 (start) to ``scale`` (end).
    ``interval`` = [lo, hi]: guidance only where lo <= progress <= hi, scale 1 (no
    unconditional branch, half the cost) elsewhere — guidance in a limited interval
    (Kynkäänniemi et al., arXiv 2404.07724).
    """
    if interval is not None and not interval[0] <= float(progress) <= interval[1]:
        return 1.0
    if schedule == "constant":
        return float(scale)
    if schedule == "linear":
        p = min(max(float(progress), 0.0), 1.0)
        return 1.0 + (float(scale) - 1.0) * p
    raise ValueError(f"unknown guidance schedule '{schedule}' ({' | '.join(GUIDANCE_SCHEDULES)})")


def guided(
    model_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale_fn: Callable[[torch.Tensor], float],
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Wrap ``model_fn(x, t, c)`` into a guided ``velocity_fn(x, t)``.

    ``cond``/``uncond``: batched conditioning (labels for DiT, condition vectors for E-CAR
    heads), concatenated along dim 0 so both branches run in one call. ``scale_fn(t)``
    gives the guidance scale at time ``t``.
    """

    def velocity_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = scale_fn(t)
        if s == 1.0:
            return model_fn(x, t, cond)
        v = model_fn(torch.cat([x, x]), t, torch.cat([cond, uncond]))
        v_c, v_u = v.chunk(2)
        return v_u + s * (v_c - v_u)

    return velocity_fn
