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

import functools
from dataclasses import dataclass
from typing import Callable, Literal, overload

import torch

from ecar.samplers.stop import check_stop

__all__ = ["GaussianChain", "StepMean", "path_log_ratio", "power_grid", "step_log_ratio"]

RowVelocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``v(x (B, M, D), t (B, M)) -> (B, M, D)``: a velocity with one time per row."""

StepMean = Callable[[torch.Tensor, int], torch.Tensor]
"""``m(x (B, M, D), k) -> (B, M, D)``: the mean of step k of a chain from state x (its
:meth:`GaussianChain.coefficients`, a_k·x + b_k·v at the velocity there)."""


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
        :func:`~ecar.samplers.time_grid`) by default. Computed once per chain and device (read
        only: the same tensor is returned each time)."""
        return _grid(self.steps, self.power, self.end, torch.device(device) if device is not None else None)

    def stds(self, device=None) -> torch.Tensor:
        """(K,) the standard deviation τ·σ_k of each transition, all > 0 (cached like :meth:`grid`)."""
        return _stds(self, torch.device(device) if device is not None else None)

    def means(self, velocity: RowVelocity, states: torch.Tensor) -> torch.Tensor:
        """The transition means of given states in one velocity call.

        states (B, M, K, D): x_0 … x_{K−1} of B·M paths -> (B, M, K, D) the means m_k of
        x_{k+1}. ``velocity`` sees (B, M·K, D) rows with their times (B, M·K).
        """
        return self._step_means(states, self._velocities(velocity, states))

    def _velocities(self, velocity: RowVelocity, states: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``velocity`` at states (B, M, J, D), state j at grid time t_{start + j}: one call of M·J rows."""
        b, m, j, d = states.shape
        t = self.grid(states.device)[start:start + j].to(states.dtype)
        return velocity(states.reshape(b, m * j, d), t.repeat(m)[None].expand(b, -1)).reshape(b, m, j, d)

    def _step_means(self, states: torch.Tensor, v: torch.Tensor, start: int = 0) -> torch.Tensor:
        """The means m_k of states x_start … x_{K−1} (B, M, K − start, D) given their velocities v."""
        a, b = (c[start:start + states.shape[2], None].to(states.dtype) for c in _coefficients(self, states.device))
        return states * a + v * b

    def finish(self, velocity: RowVelocity, x: torch.Tensor) -> torch.Tensor:
        """The chain's last state x (B, M, D) at t = ``end`` -> the token at t = 1: one Euler step
        x + (1 − end)·v(x, end) (x itself when ``end`` = 1, no call)."""
        if not self.finishes:
            return x
        t = torch.full(x.shape[:2], self.end, dtype=x.dtype, device=x.device)
        return x + (1.0 - self.end) * velocity(x, t)

    def means_and_finish(self, velocity: RowVelocity, path: torch.Tensor, start: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """For recorded paths (B, M, K + 1 − start, D) of states x_start … x_K: the means of their
        transitions (B, M, K − start, D) and the finished tokens (B, M, D) under ``velocity``, in
        one call of M·(K − start) rows per path batch (one more per path when the chain finishes)."""
        if not self.finishes:
            states = path[:, :, :-1]
            return self._step_means(states, self._velocities(velocity, states, start), start), path[:, :, -1]
        v = self._velocities(velocity, path, start)
        return (self._step_means(path[:, :, :-1], v[:, :, :-1], start),
                path[:, :, -1] + (1.0 - self.end) * v[:, :, -1])

    def coefficients(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(K,), (K,): a_k and b_k of the step mean m_k(x) = x + Δ_k·[v − ½·s·(x − t_k·v)] =
        a_k·x + b_k·v (cached like :meth:`grid`)."""
        return _coefficients(self, torch.device(device) if device is not None else None)

    def step_means(self, velocity: RowVelocity, device=None) -> StepMean:
        """The step means m_k(x) of a chain on ``velocity`` (one call at t_k per step)."""
        g = self.grid(device)
        times = [g[k] for k in range(self.steps)]
        a, b = (c.tolist() for c in self.coefficients(device))
        return lambda x, k: torch.add(x * a[k], velocity(x, times[k].to(x.dtype).expand(x.shape[:2])), alpha=b[k])

    @overload
    def sample(self, velocity: RowVelocity, noise: torch.Tensor, generator: torch.Generator | None = None,
               record: Literal[False] = False) -> tuple[torch.Tensor, None, None]: ...

    @overload
    def sample(self, velocity: RowVelocity, noise: torch.Tensor, generator: torch.Generator | None = None, *,
               record: Literal[True]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def sample(self, velocity: RowVelocity, noise: torch.Tensor, generator: torch.Generator | None = None,
               record: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Run the chain from x_0 = τ·noise (B, M, D), K sequential velocity calls.

        Returns (x_K (B, M, D), path (B, M, K + 1, D) or None, means (B, M, K, D) or None):
        with ``record`` the visited states and the mean of every transition, as needed for
        the path density. Draws: K normals of the shape of ``noise``, in step order.
        """
        return self._run(self.step_means(velocity, noise.device), noise, generator, record)

    @overload
    def sample_steps(self, step_mean: StepMean, noise: torch.Tensor, generator: torch.Generator | None = None,
                     record: Literal[False] = False) -> tuple[torch.Tensor, None, None]: ...

    @overload
    def sample_steps(self, step_mean: StepMean, noise: torch.Tensor, generator: torch.Generator | None = None, *,
                     record: Literal[True]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def sample_steps(self, step_mean: StepMean, noise: torch.Tensor, generator: torch.Generator | None = None,
                     record: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`sample` with the step means given (a head that precomputes its x-free parts per
        grid time, :meth:`~ecar.models.heads.MixtureHead.chain_means`)."""
        return self._run(step_mean, noise, generator, record)

    def _run(self, step_mean: StepMean, noise: torch.Tensor, generator: torch.Generator | None,
             record: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        stds = self.stds(noise.device).tolist()
        x = self.temperature * noise
        path, means = [x], []
        for k in range(self.steps):
            check_stop()
            mean = step_mean(x, k)
            eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = torch.add(mean, eps, alpha=stds[k])
            if record:
                path.append(x)
                means.append(mean)
        if not record:
            return x, None, None
        return x, torch.stack(path, dim=2), torch.stack(means, dim=2)


@functools.lru_cache(maxsize=64)
def _grid(steps: int, power: float, end: float, device) -> torch.Tensor:
    return power_grid(steps, power, end, device)


@functools.lru_cache(maxsize=64)
def _stds(chain: GaussianChain, device) -> torch.Tensor:
    g = chain.grid(device).double()
    t, dt = g[:-1], g[1:] - g[:-1]
    return (chain.temperature * torch.sqrt(chain.noise_scale * (1 - t) * dt)).float()


@functools.lru_cache(maxsize=64)
def _coefficients(chain: GaussianChain, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(K,), (K,): a_k = 1 − ½·s·Δ_k and b_k = Δ_k·(1 + ½·s·t_k), the step mean a_k·x + b_k·v."""
    g = chain.grid(device).double()
    t, dt = g[:-1], g[1:] - g[:-1]
    return (1 - 0.5 * chain.noise_scale * dt).float(), (dt * (1 + 0.5 * chain.noise_scale * t)).float()


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
