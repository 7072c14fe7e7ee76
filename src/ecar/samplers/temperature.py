"""Sampling at a temperature: the integrators of :mod:`ecar.samplers.ode` with their noise scaled.

A temperature τ scales every noise draw of a sampling call: the start point x_0 = τ·ε (all
integrators; for Gaussian data an ODE sampler then returns exactly the data's mean plus τ
times its spread), and with ``euler_maruyama`` also each step's injected noise, while the
drift stays that of the untempered SDE (MAR, arXiv 2406.11838 §3.3, scales the noise of its
DDPM steps by τ the same way). τ = 1 is plain sampling, τ < 1 sharpens, τ = 0 is the
deterministic drift.

The tempered Euler–Maruyama step is the shared :func:`~ecar.samplers.ode.euler_maruyama`
run with noise scale τ²·s on a corrected velocity ṽ, so no integrator is copied. With g² =
s·(1 − t) the wanted step is x += dt·[v − ½s(x − t·v)] + τ·√(s(1 − t)dt)·ε; the shared step
with noise scale s' = τ²s adds exactly that noise and the drift ṽ − ½s'(x − t·ṽ), which
equals the wanted drift for ṽ = [v·(1 + ½st) − ½s(1 − τ²)·x] / (1 + ½τ²st).
"""

from __future__ import annotations

import torch

from ecar.samplers.ode import VelocityFn, euler_maruyama, integrate

__all__ = ["integrate_at_temperature", "tempered_velocity"]


def tempered_velocity(velocity_fn: VelocityFn, noise_scale: float, temperature: float) -> VelocityFn:
    """ṽ of the module docstring: Euler–Maruyama with noise scale τ²·s on ṽ takes the step of
    noise scale s on v with its injected noise multiplied by τ."""
    s, tau2 = float(noise_scale), float(temperature) ** 2

    def v_tilde(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = velocity_fn(x, t)
        return (v * (1 + 0.5 * s * t) - 0.5 * s * (1 - tau2) * x) / (1 + 0.5 * tau2 * s * t)

    return v_tilde


def integrate_at_temperature(
    name: str,
    velocity_fn: VelocityFn,
    noise: torch.Tensor,
    grid: torch.Tensor,
    generator: torch.Generator | None = None,
    noise_scale: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Integrate ``velocity_fn`` over ``grid`` from x_0 = temperature·noise with sampler
    ``name`` (``euler`` | ``heun`` | ``euler_maruyama``); see the module docstring."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    x = noise if temperature == 1.0 else temperature * noise
    if name != "euler_maruyama" or temperature == 1.0:
        return integrate(name, velocity_fn, x, grid, generator, noise_scale)
    v = tempered_velocity(velocity_fn, noise_scale, temperature)
    return euler_maruyama(v, x, grid, generator, noise_scale=noise_scale * temperature**2)
