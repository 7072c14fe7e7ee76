"""The Gaussian chain: Euler–Maruyama of the flow's SDE with noise at *every* step, so that a
sampled path has an exact density (docs/speculative.md).

The chain over a time grid 0 = t_0 < … < t_K = 1 (t = 0 noise, t = 1 data, as everywhere):

    x_0 = τ·ε,     x_{k+1} = m(x_k, t_k) + τ·σ_k·ε_k,
    m(x, t) = x + Δ_k·[v(x, t) − ½·s·(x − t·v(x, t))],     σ_k = √(s·(1 − t_k)·Δ_k),

with Δ_k = t_{k+1} − t_k, s the noise scale and τ the temperature. The mean and σ_k are the
tempered Euler–Maruyama step of :mod:`ecar.samplers.temperature` (the drift untempered, the
noise × τ); unlike :func:`~ecar.samplers.ode.euler_maruyama` the last step keeps its noise
(σ_{K−1} = √(s)·Δ_{K−1} > 0), so every transition is a Gaussian with a known mean and the
path x_{0:K} has the density N(x_0; 0, τ²I)·Π_k N(x_{k+1}; m_k, τ²σ_k²I). Two chains that
share grid, s and τ and differ only in v have the path log-ratio :func:`path_log_ratio`
(the start term cancels). Guidance keeps this: the guided velocity is an affine mix of two
velocities, so the guided transition is still Gaussian with the guided mean.

Two settings shape the chain without touching its exactness. ``power`` p spaces the grid as
t_k = end·(1 − (1 − k/K)^p): p > 1 takes finer steps near the data end, where the last
step's noise (std τ·√(s·(1 − t_{K−1})·Δ_{K−1})) would otherwise stay in the sample. ``end``
< 1 stops the chain at t_K = end; :meth:`GaussianChain.finish` then maps its state to t = 1
by one deterministic Euler step of the velocity. The path up to ``end`` keeps its exact
density, and the finished token is a deterministic function of that path and of the
network that finishes it, so a verifier that finishes with its own velocity outputs its own
law (docs/speculative.md, "Finishing the chain").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["GaussianChain", "path_log_ratio", "power_grid", "step_log_ratio"]

RowVelocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``v(x (B, M, D), t (B, M)) -> (B, M, D)``: a velocity with one time per row."""


@dataclass(frozen=True)
class GaussianChain:
    """K steps of the chain above; ``noise_scale`` s > 0 and ``temperature`` τ > 0 (else the
    transitions have no density)."""

    steps: int
    noise_scale: float = 1.0
    temperature: float = 1.0
    power: float = 1.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or not self.noise_scale > 0 or not self.temperature > 0:
            raise ValueError(f"a Gaussian chain needs steps >= 1, noise_scale > 0 and temperature > 0 "
                             f"(else a step has no density); got {self.steps}, {self.noise_scale}, "
                             f"{self.temperature}")
        if not self.power > 0 or not 0 < self.end <= 1:
            raise ValueError(f"a Gaussian chain needs power > 0 and 0 < end <= 1; got {self.power}, {self.end}")

    @property
    def finishes(self) -> bool:
        """Whether the chain stops before t = 1 (``end`` < 1) and a deterministic step finishes it."""
        return self.end < 1

    def grid(self, device=None) -> torch.Tensor:
        """(K + 1,) float32: t_k = end·(1 − (1 − k/K)^power); uniform from 0 to 1 (those of
        :func:`~ecar.samplers.time_grid`) by default."""
        return power_grid(self.steps, self.power, self.end, device)

    def stds(self, device=None) -> torch.Tensor:
        """(K,) the standard deviation τ·σ_k of each transition, all > 0."""
        g = self.grid(device).double()
        t, dt = g[:-1], g[1:] - g[:-1]
        return (self.temperature * torch.sqrt(self.noise_scale * (1 - t) * dt)).float()

    def means(self, velocity: RowVelocity, states: torch.Tensor) -> torch.Tensor:
        """The transition means of given states in one velocity call.

        states (B, M, K, D): x_0 … x_{K−1} of B·M paths -> (B, M, K, D) the means m_k of
        x_{k+1}. ``velocity`` sees (B, M·K, D) rows with their times (B, M·K).
        """
        return self._step_means(states, self._velocities(velocity, states))

    def _velocities(self, velocity: RowVelocity, states: torch.Tensor) -> torch.Tensor:
        """``velocity`` at states (B, M, J, D), state j at grid time t_j: one call of M·J rows."""
        b, m, j, d = states.shape
        t = self.grid(states.device)[:j].to(states.dtype)
        return velocity(states.reshape(b, m * j, d), t.repeat(m)[None].expand(b, -1)).reshape(b, m, j, d)

    def _step_means(self, states: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The means m_k of states x_0 … x_{K−1} (B, M, K, D) given their velocities v."""
        g = self.grid(states.device)
        t, dt = g[:-1].to(states.dtype), (g[1:] - g[:-1]).to(states.dtype)
        return self.step_mean(states, v, t[:, None], dt[:, None])

    def finish(self, velocity: RowVelocity, x: torch.Tensor) -> torch.Tensor:
        """The chain's last state x (B, M, D) at t = ``end`` -> the token at t = 1: one Euler step
        x + (1 − end)·v(x, end) (x itself when ``end`` = 1, no call)."""
        if not self.finishes:
            return x
        t = torch.full(x.shape[:2], self.end, dtype=x.dtype, device=x.device)
        return x + (1.0 - self.end) * velocity(x, t)

    def means_and_finish(self, velocity: RowVelocity, path: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For recorded paths (B, M, K + 1, D): the transition means (B, M, K, D) and the finished
        tokens (B, M, D) under ``velocity``, in one call of M·K rows per path batch (M·(K + 1)
        when the chain finishes)."""
        if not self.finishes:
            return self.means(velocity, path[:, :, :-1]), path[:, :, -1]
        v = self._velocities(velocity, path)
        return self._step_means(path[:, :, :-1], v[:, :, :-1]), path[:, :, -1] + (1.0 - self.end) * v[:, :, -1]

    def step_mean(self, x: torch.Tensor, v: torch.Tensor, t, dt) -> torch.Tensor:
        """m(x, t) = x + Δ·[v − ½·s·(x − t·v)] (broadcasting t and Δ)."""
        return x + dt * (v - 0.5 * self.noise_scale * (x - t * v))

    def sample(self, velocity: RowVelocity, noise: torch.Tensor, generator: torch.Generator | None = None,
               record: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Run the chain from x_0 = τ·noise (B, M, D), K sequential velocity calls.

        Returns (x_K (B, M, D), path (B, M, K + 1, D) or None, means (B, M, K, D) or None):
        with ``record`` the visited states and the mean of every transition, as needed for
        the path density. Draws: K normals of the shape of ``noise``, in step order.
        """
        g = self.grid(noise.device)
        stds = self.stds(noise.device)
        x = self.temperature * noise
        path, means = [x], []
        for k in range(self.steps):
            t = g[k].to(x.dtype).expand(x.shape[:2])
            v = velocity(x, t)
            mean = self.step_mean(x, v, g[k], g[k + 1] - g[k])
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + stds[k] * eps
            if record:
                path.append(x)
                means.append(mean)
        if not record:
            return x, None, None
        return x, torch.stack(path, dim=2), torch.stack(means, dim=2)


def power_grid(steps: int, power: float = 1.0, end: float = 1.0, device=None) -> torch.Tensor:
    """(steps + 1,) float32 times end·(1 − (1 − k/K)^power), k = 0 … K; ``power`` 1 and ``end`` 1
    give exactly the uniform grid of :func:`~ecar.samplers.time_grid`."""
    u = torch.linspace(0.0, 1.0, steps + 1, device=device)
    g = u if power == 1 else 1 - (1 - u.double()) ** power
    return (g if end == 1 else g.double() * end).float()


def step_log_ratio(path: torch.Tensor, means_p: torch.Tensor, means_q: torch.Tensor,
                   stds: torch.Tensor) -> torch.Tensor:
    """log p − log q of each transition of a path under two chains with the same step stds.

    path (…, K + 1, D), means (…, K, D), stds (K,) -> (…, K) float64:
    Σ_d [(x_{k+1} − m^q_k)² − (x_{k+1} − m^p_k)²] / (2·std_k²).
    """
    nxt = path[..., 1:, :].double()
    var = stds.double()[:, None] ** 2
    diff = (nxt - means_q.double()) ** 2 - (nxt - means_p.double()) ** 2
    return (diff / (2 * var)).sum(dim=-1)


def path_log_ratio(path: torch.Tensor, means_p: torch.Tensor, means_q: torch.Tensor,
                   stds: torch.Tensor) -> torch.Tensor:
    """log p(path) − log q(path) of two chains with the same start law and step stds:
    the sum of :func:`step_log_ratio` over the K transitions (the start term cancels).
    (…, K + 1, D) path -> (…,) float64."""
    return step_log_ratio(path, means_p, means_q, stds).sum(dim=-1)
