"""The random-order masked generation loop (MAR, arXiv 2406.11838 §3.5; docs/mar.md).

Every image draws a random order of its N tokens. Iteration k runs the bidirectional
transformer once over the current grid (known tokens + mask tokens), takes the conditions
z of the next ``counts[k]`` tokens in that order, and the head integrates those tokens from
noise (at the settings' temperature) to data in ``steps`` steps; they then become known.
Guidance doubles the transformer batch (conditional + null label) in iterations whose scale
is not 1 and mixes the two head velocities; the tokens themselves are shared by both halves.
No KV cache: every token may attend to every other, so each pass sees the whole grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from ecar.engine.units import UnitReport, constant_scale
from ecar.flow.masking import random_orders
from ecar.samplers import SAMPLER_NAMES, guided, time_grid
from ecar.samplers.temperature import integrate_at_temperature

__all__ = ["MaskedNet", "MaskedSampleConfig", "generate_masked"]


class MaskedNet(Protocol):
    """What the masked loop needs of a network (:class:`~ecar.models.mar.MAR` satisfies it):
    N tokens of D values, a null class, the bidirectional transformer over a partly masked
    grid, and the per-token head."""

    num_tokens: int
    token_dim: int

    @property
    def null_class(self) -> int: ...

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def head_condition(self, z: torch.Tensor) -> torch.Tensor: ...

    def velocity(self, x: torch.Tensor, u: torch.Tensor, zc: torch.Tensor) -> torch.Tensor: ...

    def latent(self, tokens: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class MaskedSampleConfig:
    """What the masked loop needs, resolved by the method from its settings
    (:mod:`ecar.methods.mar`): tokens unmasked and guidance scale per iteration, the head's
    integration steps per iteration, the integrator, its SDE noise and the temperature."""

    counts: tuple[int, ...]
    guidance: tuple[float, ...]
    steps: int
    sampler: str = "euler"
    noise_scale: float = 1.0
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.guidance) or min(self.counts, default=0) < 1:
            raise ValueError(f"MaskedSampleConfig needs one token count >= 1 and one guidance scale "
                             f"per iteration, got counts {list(self.counts)}, guidance {list(self.guidance)}")
        if self.steps < 1 or self.temperature < 0 or self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"MaskedSampleConfig: steps >= 1, temperature >= 0 and a sampler of "
                             f"{', '.join(SAMPLER_NAMES)}; got {self.steps}, {self.temperature}, {self.sampler!r}")


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, F), idx (B, n) -> (B, n, F)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


@torch.no_grad()
def generate_masked(
    model: MaskedNet,
    labels: torch.Tensor,
    settings: MaskedSampleConfig,
    generator: torch.Generator | None = None,
    return_stages: bool = False,
    on_unit: Callable[[int, torch.Tensor], None] | None = None,
) -> dict:
    """labels (B,) -> {"latents": (B, C, H, W)}, plus with ``return_stages`` ``"stages"``: the
    latent after every iteration (tokens not yet generated are 0), the last one the result.
    ``on_unit(k, latent)`` receives that latent as soon as iteration k has run.

    Random draws, in order: the orders (B, N); then per iteration the head's start noise
    (B, n_k, D) and the sampler's own draws. A seeded generator fixes the result.
    """
    B, N, D, dev = labels.shape[0], model.num_tokens, model.token_dim, labels.device
    if sum(settings.counts) != N:
        raise ValueError(f"the iterations unmask {sum(settings.counts)} tokens; the model has {N}")
    orders = random_orders(B, N, generator, dev)
    tokens = torch.zeros(B, N, D, device=dev)
    masked = torch.ones(B, N, dtype=torch.bool, device=dev)
    null = torch.full_like(labels, model.null_class)
    grid = time_grid(settings.steps, device=dev)
    report, start = UnitReport(return_stages, on_unit), 0
    for k, (n, scale) in enumerate(zip(settings.counts, settings.guidance)):
        idx = orders[:, start:start + n]
        start += n
        if scale != 1.0:
            z = model.condition(torch.cat([tokens, tokens]), torch.cat([masked, masked]), torch.cat([labels, null]))
            z_c, z_u = model.head_condition(_gather(z, torch.cat([idx, idx]))).chunk(2)
        else:
            z_c = z_u = model.head_condition(_gather(model.condition(tokens, masked, labels), idx))

        def head_fn(x: torch.Tensor, u: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
            return model.velocity(x, u.expand(x.shape[0]), zc)

        v = guided(head_fn, z_c, z_u, constant_scale(scale))
        noise = torch.randn((B, n, D), generator=generator, device=dev)
        new = integrate_at_temperature(settings.sampler, v, noise, grid, generator,
                                       settings.noise_scale, settings.temperature)
        tokens = tokens.scatter(1, idx[..., None].expand(-1, -1, D), new.to(tokens.dtype))
        masked = masked.scatter(1, idx, False)
        report.add(k, lambda: model.latent(tokens))
    return report.result(model.latent(tokens))
