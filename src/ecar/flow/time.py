"""Training-time distributions over t in [0, 1]."""

from __future__ import annotations

import torch

TIME_SAMPLINGS = ("uniform", "logit_normal")
"""Names :func:`sample_time` accepts."""


def sample_time(
    n: int,
    kind: str,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
) -> torch.Tensor:
    """Draw (n,) times. ``uniform``: U[0, 1]; ``logit_normal``: sigmoid(N(mean, std²)) (SD3 §3.1)."""
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if kind == "logit_normal":
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(z * logit_std + logit_mean)
    raise ValueError(f"unknown time sampling '{kind}' (uniform | logit_normal)")
