"""E-CAR's stage pyramid: area downsampling, time windows, coupled targets, the stage jump.

Notation (docs/ecar.md has the derivation). Stages s = 1..S have latent sides
n_1 < … < n_S = n (token grid g_s = n_s / patch). x^s = area-downsampled clean latent.
Stage s ends at signal level τ_s (τ_S = 1, clean data) and starts at level σ_s:

    start a_s = (1 − σ_s)·ε + σ_s·up(x^{s−1})        (a_1 = ε, σ_1 = 0)
    end   b_s = (1 − τ_s)·ε + τ_s·x^s                (the same ε at both ends)

with ``up`` nearest-neighbour upsampling by the integer factor k_s = n_s / n_{s−1}.

**The jump.** At sampling time stage s−1 ends at b̂ = (1 − τ)·ε' + τ·x^{s−1} with ε' white
noise at the coarse size. up(b̂) carries noise that is *constant* inside each k×k block
(variance (1−τ)² per pixel, fully correlated), while a_s needs white noise of variance
(1 − σ)². In the orthonormal block basis (one block mean component with weight k, k² − 1
zero-mean detail components) up(b̂)'s noise lives only on the mean component, with variance
k²(1−τ)². Rescaling by r = σ/τ matches the signal (r·τ·up(x) = σ·up(x)); then fresh noise
must supply variance (1 − σ)² on every detail component and (1 − σ)² − r²k²(1 − τ)² on the
mean component. That is possible iff (1 − σ) ≥ r·k·(1 − τ), i.e.

    σ ≤ σ*(τ, k) = τ / (k − (k − 1)·τ),

the largest start level reachable from τ without discarding signal. We use σ_s = σ*(τ_{s−1}, k_s):
the next stage starts exactly as noisy as the upsampled state forces it to be, and the
jump needs no extra noise on the block means. (Pyramidal Flow Matching, arXiv 2410.05954
§3.3, makes the same rescale + correlated-noise correction in its own conventions.)

The AR transformer's input for stage s is the previous stage's end state, upsampled (zeros
for stage 1): it carries what earlier stages decided, never the fresh noise of a_s. (Feeding
a_s itself would let the condition see the noise the head starts from; the flow then
collapses to a regression onto the posterior mean and samples come out blurred.)

FlowAR mode: every window is [0, 1] (σ_s = 0, τ_s = 1) and the previous stage enters only
as the AR transformer's condition, never as the start state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ecar.flow.paths import interpolate
from ecar.layers import upsample  # noqa: F401  (nearest; re-exported: the pyramid's upsampling)


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area (mean) downsampling (B, C, H, W) -> (B, C, size, size); H must be a multiple."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] % size:
        raise ValueError(f"cannot area-downsample {x.shape[-1]} to {size}: not a divisor")
    return F.avg_pool2d(x, x.shape[-1] // size)


def pyramid(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Area-downsampled copies of ``x`` at every stage size (coarse to fine)."""
    return [downsample(x, n) for n in sizes]


def max_start_level(tau: float, k: int) -> float:
    """σ*(τ, k) = τ / (k − (k − 1)τ): the highest signal level a k× jump from τ can reach."""
    return tau / (k - (k - 1) * tau)


@dataclass(frozen=True)
class StageSchedule:
    """Sizes and noise levels of every stage.

    sizes: latent side n_s per stage; tau: end levels τ_1..τ_S; sigma: start levels σ_1..σ_S.
    """

    sizes: tuple[int, ...]
    tau: tuple[float, ...]
    sigma: tuple[float, ...]
    flowar: bool = False

    @property
    def num_stages(self) -> int:
        return len(self.sizes)

    def factor(self, s: int) -> int:
        """Upsampling factor into stage s (0-based; s >= 1)."""
        return self.sizes[s] // self.sizes[s - 1]

    @staticmethod
    def build(sizes: list[int], windows: list[float] | None, flowar: bool = False) -> "StageSchedule":
        """``windows`` = interior end levels τ_1..τ_{S−1} (increasing in (0, 1)); τ_S = 1.

        ``None`` spaces them uniformly: τ_s = s / S.
        """
        S = len(sizes)
        if any(b <= a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"stage sizes must increase strictly, got {sizes}")
        if any(b % a for a, b in zip(sizes, sizes[1:])):
            raise ValueError(f"each stage size must divide the next, got {sizes}")
        if flowar:
            return StageSchedule(tuple(sizes), (1.0,) * S, (0.0,) * S, flowar=True)
        if windows is None:
            windows = [s / S for s in range(1, S)]
        if len(windows) != S - 1:
            raise ValueError(f"{S} stages need {S - 1} interior window ends, got {list(windows)}")
        tau = [float(w) for w in windows] + [1.0]
        if any(not 0.0 < t <= 1.0 for t in tau) or any(b <= a for a, b in zip(tau, tau[1:])):
            raise ValueError(f"window ends must increase strictly inside (0, 1], got {windows}")
        sigma = [0.0] + [
            max_start_level(tau[s - 1], sizes[s] // sizes[s - 1]) for s in range(1, S)
        ]
        return StageSchedule(tuple(sizes), tuple(tau), tuple(sigma))

    def windows(self) -> list[tuple[float, float]]:
        """Nominal time windows [τ_{s−1}, τ_s] (τ_0 = 0); they tile [0, 1] (FlowAR: all [0, 1])."""
        if self.flowar:
            return [(0.0, 1.0)] * self.num_stages
        ends = (0.0,) + self.tau
        return [(ends[s], ends[s + 1]) for s in range(self.num_stages)]


def default_stage_sizes(latent_size: int, patch: int, num_stages: int | None = None) -> list[int]:
    """Grids 1, 2, 4, …, g (halving from the full token grid), as latent sides n_s = g_s·patch."""
    g = latent_size // patch
    if g < 1 or g & (g - 1):
        raise ValueError(f"token grid {g} is not a power of two; set model.stages explicitly")
    grids = [2**i for i in range(int(math.log2(g)) + 1)]
    if num_stages is not None:
        grids = grids[-num_stages:]
    return [gs * patch for gs in grids]


def stage_targets(
    x: torch.Tensor,
    sched: StageSchedule,
    generator: torch.Generator | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Start/end points and AR inputs of every stage for clean latents x (B, C, n, n).

    Returns per stage a dict with ``start`` a_s, ``end`` b_s, ``cond``, the AR
    transformer's input for that stage: the previous stage's end state upsampled to this
    stage's size (zeros for stage 1), and ``clean`` x^s. E-CAR mode builds the stages as
    sampling does: a_s is the :func:`jump` of b_{s−1} (fresh noise on the block details),
    and b_s shares a_s's noise, so the condition knows what earlier stages decided but never
    the fresh noise the head starts from. FlowAR mode: a_s is fresh noise, b_s = x^s,
    cond = up(x^{s−1}).
    """
    xs = pyramid(x, list(sched.sizes))
    out: list[dict[str, torch.Tensor]] = []
    for s, n in enumerate(sched.sizes):
        prev_end = out[-1]["end"] if s else None
        cond = torch.zeros_like(xs[0]) if prev_end is None else upsample(prev_end, n)
        start, end = stage_pair(xs, s, sched, prev_end, generator)
        out.append({"start": start, "end": end, "cond": cond, "clean": xs[s]})
    return out


def stage_pair(
    xs: list[torch.Tensor],
    s: int,
    sched: StageSchedule,
    prev_end: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of stage s's (start a_s, end b_s) given the clean pyramid ``xs`` and the
    previous stage's end state ``prev_end`` (unused for stage 1 and in FlowAR mode).

    Given ``prev_end`` — which fixes the AR condition up(b_{s−1}) — repeated calls draw
    independent (a_s, b_s) from their conditional distribution: the jump's fresh noise is
    the only randomness. The objective uses this to train the head on several draws per
    AR pass (``model.head_batch_mul``).
    """
    n = sched.sizes[s]
    if s == 0 or sched.flowar:
        eps = torch.randn(xs[s].shape, generator=generator, device=xs[s].device, dtype=xs[s].dtype)
        start = eps
    else:
        assert prev_end is not None, "stage s > 0 of E-CAR mode needs the previous stage's end state"
        start = jump(prev_end, sched.tau[s - 1], sched.sigma[s], n, generator)
        eps = (start - sched.sigma[s] * upsample(xs[s - 1], n)) / (1 - sched.sigma[s])
    return start, interpolate(eps, xs[s], sched.tau[s])


def jump(
    x_end: torch.Tensor,
    tau_prev: float,
    sigma_next: float,
    size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Stage transition: state at level ``tau_prev`` (coarse) -> start state at ``sigma_next``.

    a = r·up(x_end) + (1 − σ)·(z − up(mean_k(z))) + c·up(mean_k(z)),  r = σ/τ,
    c = sqrt(max(0, (1 − σ)² − r²k²(1 − τ)²)), z white noise at the fine size. up(mean_k(z))
    has unit variance on each block's mean component and z − up(mean_k(z)) unit variance on
    every detail component, so a's noise is white with variance (1 − σ)² (module docstring).
    """
    k = size // x_end.shape[-1]
    r = sigma_next / tau_prev
    up = upsample(x_end, size) * r
    z = torch.randn((*x_end.shape[:2], size, size), generator=generator, device=x_end.device,
                    dtype=x_end.dtype)
    z_mean = upsample(downsample(z, x_end.shape[-1]), size)  # unit variance on block means
    detail = z - z_mean                                       # white on the detail components
    extra = max(0.0, (1 - sigma_next) ** 2 - (r * k * (1 - tau_prev)) ** 2) ** 0.5
    return up + (1 - sigma_next) * detail + extra * z_mean
