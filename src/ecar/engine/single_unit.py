"""Generation for one-unit models (DiT): integrate the whole latent from noise to data."""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from ecar.engine.units import UnitReport
from ecar.samplers import SampleConfig, guidance_scale, guided, integrate, time_grid

__all__ = ["VelocityNet", "generate_single_unit"]


class VelocityNet(Protocol):
    """What the one-unit loop needs of a network (:class:`~ecar.models.dit.DiT` satisfies it):
    C×size×size latents, a null class, and the velocity of the whole latent."""

    channels: int
    size: int

    @property
    def null_class(self) -> int: ...

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def generate_single_unit(
    model: VelocityNet,
    labels: torch.Tensor,
    sample: SampleConfig,
    generator: torch.Generator | None = None,
    return_stages: bool = False,
    on_unit: Callable[[int, torch.Tensor], None] | None = None,
) -> dict:
    """labels (B,) long on the model's device -> {"latents": (B, C, H, W)}.

    Guidance progress is the time t, so a ``linear`` schedule ramps over the trajectory.
    The whole latent is one unit: ``on_unit(0, latents)`` is called once, with the result.
    """
    b = labels.shape[0]
    x = torch.randn(
        (b, model.channels, model.size, model.size), generator=generator, device=labels.device
    )

    def model_fn(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, t.expand(x.shape[0]), y)

    null = torch.full_like(labels, model.null_class)
    scale_fn = lambda t: guidance_scale(sample.cfg, sample.cfg_schedule, float(t), sample.cfg_interval)  # noqa: E731
    v = guided(model_fn, labels, null, scale_fn)
    grid = time_grid(sample.steps, device=labels.device)
    out = integrate(sample.sampler, v, x, grid, generator, sample.noise_scale)
    report = UnitReport(return_stages, on_unit)
    report.add(0, lambda: out)
    return report.result(out)
