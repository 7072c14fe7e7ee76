"""Stateless integrators of a velocity field over a time grid.

``velocity_fn(x, t) -> v`` where ``t`` is a 0-d tensor; ``time_grid`` is an increasing
1-D tensor from the start time to the end time. Each function returns the state at the
last grid point. Nothing here picks a device: everything follows ``x``. Each step starts
with :func:`~ecar.samplers.stop.check_stop` (a caller's cancellation, a no-op by default).
"""

from __future__ import annotations

from typing import Callable

import torch

from ecar.samplers.stop import check_stop

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def time_grid(steps: int, start: float = 0.0, end: float = 1.0, device=None) -> torch.Tensor:
    """``steps`` uniform intervals from ``start`` to ``end`` -> (steps + 1,) float32."""
    return torch.linspace(start, end, steps + 1, device=device)


def euler(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """First-order explicit Euler: one velocity evaluation per step."""
    for i in range(len(grid) - 1):
        check_stop()
        t, dt = grid[i], grid[i + 1] - grid[i]
        x = x + dt * velocity_fn(x, t)
    return x


def heun(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Second-order Heun (explicit trapezoid): two velocity evaluations per step, except a
    final step that ends at t = 1, which is an Euler step (as in EDM, Karras et al. 2022,
    Alg. 1): the velocity at t = 1 is undefined for x-predicting models (0 / 0) and the
    last step's local error is O(h²) either way, so the method stays second order."""
    n = len(grid) - 1
    for i in range(n):
        check_stop()
        t0, t1 = grid[i], grid[i + 1]
        dt = t1 - t0
        v0 = velocity_fn(x, t0)
        x_pred = x + dt * v0
        if i == n - 1 and float(t1) >= 1.0:
            x = x_pred
        else:
            x = x + dt * 0.5 * (v0 + velocity_fn(x_pred, t1))
    return x


def euler_maruyama(
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: torch.Generator | None = None,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """Euler–Maruyama for the SDE with the same marginals as the linear-path ODE.

    dx = [v + ½ g² ∇log p_t(x)] dt + g dW, with g(t)² = noise_scale·(1 − t) and the score
    of the linear path recovered from the velocity: ∇log p_t(x) = −(x − t·v)/(1 − t).
    The product g²·score = −noise_scale·(x − t·v) stays finite at t → 1. The last step
    adds no noise. ``noise_scale=0`` reduces to :func:`euler`.
    """
    n = len(grid) - 1
    for i in range(n):
        check_stop()
        t, dt = grid[i], grid[i + 1] - grid[i]
        v = velocity_fn(x, t)
        drift = v - 0.5 * noise_scale * (x - t * v)
        x = x + dt * drift
        if i < n - 1 and noise_scale > 0:
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + torch.sqrt(noise_scale * (1 - t) * dt) * eps
    return x


SAMPLERS = {"euler": euler, "heun": heun, "euler_maruyama": euler_maruyama}


def integrate(
    name: str,
    velocity_fn: VelocityFn,
    x: torch.Tensor,
    grid: torch.Tensor,
    generator: torch.Generator | None = None,
    noise_scale: float = 1.0,
) -> torch.Tensor:
    """Dispatch by sampler name (``euler`` | ``heun`` | ``euler_maruyama``)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}")
    if name == "euler_maruyama":
        return euler_maruyama(velocity_fn, x, grid, generator, noise_scale=noise_scale)
    return SAMPLERS[name](velocity_fn, x, grid, generator)


def evaluations_per_step(name: str) -> int:
    """Velocity evaluations per step (Heun: one fewer in total when the grid ends at t = 1)."""
    return 2 if name == "heun" else 1
