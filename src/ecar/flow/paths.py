"""The linear (rectified-flow) path between noise and data.

Time t in [0, 1]; t = 0 is noise ε, t = 1 is data x:  x_t = (1 − t)·ε + t·x,
velocity u_t = x − ε. With a velocity prediction v, the implied data and noise
estimates are x̂ = x_t + (1 − t)·v and ε̂ = x_t − t·v.
"""

from __future__ import annotations

import torch


def _bcast(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(t.shape + (1,) * (like.dim() - t.dim())) if t.dim() else t


def interpolate(noise: torch.Tensor, data: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 − t)·noise + t·data; ``t`` scalar or (B,)."""
    t = _bcast(t, data)
    return (1 - t) * noise + t * data


def target_velocity(noise: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    return data - noise


def data_estimate(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    return x_t + (1 - _bcast(t, x_t)) * v


def noise_estimate(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    return x_t - _bcast(t, x_t) * v
