"""The next-X generation loop (xAR, arXiv 2502.20388; docs/xar.md).

Unit by unit: unit u starts from noise ε (B, n_u, D) and is integrated over t ∈ [0, 1] in
``steps`` steps of the chosen sampler (Euler, Heun, Euler–Maruyama; the last step is
deterministic), the network attending to the earlier units, which are clean (t = 1). With
the KV cache each finished unit is appended once (:meth:`XAR.append_unit`) and every step
attends to the cache without extending it; ``use_cache=False`` recomputes the whole prefix
with the block-causal mask at every step (the training pass) and must give the same result.
With ``context_time`` t_c < 1 a finished unit enters the context re-noised once, as
(1 − t_c)·ε + t_c·x̂ at time t_c (fresh ε), like the noisy context of training; the result
keeps the clean x̂.

Guidance doubles the batch (label, null label) while any unit left guides, and mixes the two
velocities at the unit's scale; after the last guided unit the null half of the cache is
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from ecar.engine.units import GuidedLabels, UnitReport, constant_scale
from ecar.flow.paths import interpolate
from ecar.samplers import SAMPLER_NAMES, guided, integrate, time_grid

__all__ = ["NextXNet", "NextXSampleConfig", "generate_next_x"]


class NextXNet(Protocol):
    """What the next-X loop needs of a network (:class:`~ecar.models.xar.XAR` satisfies it):
    U units of ``counts[u]`` tokens of D values, a null class, the velocity of one unit with
    a KV cache of the earlier ones (or of a whole sequence), and the latent of the units so far."""

    token_dim: int
    counts: list[int]

    @property
    def num_units(self) -> int: ...

    @property
    def null_class(self) -> int: ...

    def new_cache(self) -> Sequence[Any]: ...

    def unit_velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, u: int, cache: Any) -> torch.Tensor: ...

    def append_unit(self, x: torch.Tensor, y: torch.Tensor, u: int, cache: Any, t: float = 1.0) -> None: ...

    def velocity_seq(self, seq: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def latent(self, seq: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class NextXSampleConfig:
    """What the loop needs, resolved by the method (:mod:`ecar.methods.xar`): integration
    steps and guidance scale per unit, the integrator and its SDE noise."""

    steps: tuple[int, ...]
    guidance: tuple[float, ...]
    sampler: str = "euler"
    noise_scale: float = 1.0
    context_time: float = 1.0

    def __post_init__(self) -> None:
        if (len(self.steps) != len(self.guidance) or min(self.steps, default=0) < 1 or self.sampler not in SAMPLER_NAMES
                or not 0.0 < self.context_time <= 1.0):
            raise ValueError(f"NextXSampleConfig needs one step count >= 1 and one guidance scale per unit and a "
                             f"sampler of {', '.join(SAMPLER_NAMES)}; got steps {list(self.steps)}, guidance "
                             f"{list(self.guidance)}, sampler {self.sampler!r}; context_time in (0, 1], got {self.context_time}")


@torch.no_grad()
def generate_next_x(
    model: NextXNet,
    labels: torch.Tensor,
    settings: NextXSampleConfig,
    generator: torch.Generator | None = None,
    return_stages: bool = False,
    on_unit: Callable[[int, torch.Tensor], None] | None = None,
    use_cache: bool = True,
) -> dict:
    """labels (B,) -> {"latents": (B, C, H, W)}, plus ``"stages"`` (the latent after every unit:
    tokens not generated yet at 0; scales: the newest scale, upsampled) with ``return_stages``.
    ``on_unit(u, latent)`` receives that latent as soon as unit u exists.

    Random draws, in order: per unit its start noise (B, n_u, D), then the sampler's own, then
    (``context_time`` < 1, not after the last unit) the context noise (B, n_u, D).
    """
    U, B, D, dev = model.num_units, labels.shape[0], model.token_dim, labels.device
    if len(settings.steps) != U:
        raise ValueError(f"the model has {U} units but the settings give {len(settings.steps)}")
    scales = settings.guidance
    null = torch.full_like(labels, model.null_class)
    batch = GuidedLabels(labels, model.null_class, scales)
    cache = model.new_cache() if use_cache else None
    tc = float(settings.context_time)
    done: list[torch.Tensor] = []
    context: list[torch.Tensor] = []
    report = UnitReport(return_stages, on_unit)
    for u in range(U):
        batch.at(u, cache)
        guide, y = batch.guide, batch.y

        def model_fn(x: torch.Tensor, t: torch.Tensor, yy: torch.Tensor, u: int = u) -> torch.Tensor:
            if use_cache:
                return model.unit_velocity(x, t, yy, u, cache)
            b = x.shape[0]
            prefix = [p if b == B else torch.cat([p, p]) for p in context]
            seq = torch.cat(prefix + [x], dim=1)
            times = torch.full((b, u + 1), tc, device=x.device)
            times[:, u] = t
            return model.velocity_seq(seq, times, yy)[:, -x.shape[1]:]

        v = guided(model_fn, labels, null, constant_scale(scales[u]))
        noise = torch.randn((B, model.counts[u], D), generator=generator, device=dev)
        tokens = integrate(settings.sampler, v, noise, time_grid(settings.steps[u], device=dev), generator,
                           settings.noise_scale)
        done.append(tokens)
        if u + 1 < U:
            ctx = tokens
            if tc < 1.0:
                ctx = interpolate(torch.randn(tokens.shape, generator=generator, device=dev), tokens, tc)
            context.append(ctx)
            if use_cache:
                model.append_unit(torch.cat([ctx, ctx]) if guide else ctx, y, u, cache, t=tc)
        report.add(u, lambda: model.latent(torch.cat(done, dim=1)))
    return report.result(model.latent(torch.cat(done, dim=1)))
