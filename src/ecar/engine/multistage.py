"""The multistage autoregressive loop (E-CAR and FlowAR mode).

Per stage s: the AR transformer runs once on the stage's input (earlier stages come from
the KV cache), then the head integrates the stage's tokens over u ∈ [0, 1] in K_s steps,
then the jump re-noises the upsampled result into the next stage's start state
(:func:`ecar.flow.pyramid.jump`). Guidance doubles the batch (conditional + null
label) through the transformer and mixes the two head velocities with a per-stage scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch

from ecar.engine.units import GuidedLabels, UnitReport, constant_scale
from ecar.flow.pyramid import StageSchedule, jump
from ecar.samplers import guided, integrate, time_grid

__all__ = ["MultistageNet", "StageSampleConfig", "generate_multistage"]


class MultistageNet(Protocol):
    """What the multistage loop needs of a network (:class:`~ecar.models.ecar.ECAR` satisfies
    it): its stage pyramid, C-channel latents, a null class, the AR transformer (a full pass or
    one stage with a KV cache) and the per-stage head."""

    schedule: StageSchedule
    channels: int

    @property
    def num_stages(self) -> int: ...

    @property
    def null_class(self) -> int: ...

    def new_cache(self) -> Sequence[Any]: ...

    def ar_input(self, prev_end: torch.Tensor | None, s: int, like: torch.Tensor) -> torch.Tensor | None: ...

    def condition(self, inputs: list[torch.Tensor | None], y: torch.Tensor) -> list[torch.Tensor]: ...

    def condition_step(self, inp: torch.Tensor | None, s: int, y: torch.Tensor, cache: Any) -> torch.Tensor: ...

    def head_condition(self, z: torch.Tensor) -> torch.Tensor: ...

    def velocity(self, x_tokens: torch.Tensor, u: torch.Tensor, zc: torch.Tensor, s: int) -> torch.Tensor: ...

    def stage_tokens(self, latent: torch.Tensor) -> torch.Tensor: ...

    def stage_latent(self, tokens: torch.Tensor, s: int) -> torch.Tensor: ...


@dataclass(frozen=True)
class StageSampleConfig:
    """What the multistage loop needs per stage, resolved by the method from its settings
    (:mod:`ecar.methods.ecar`): integration steps and guidance scale of every stage
    (coarse to fine), the integrator and its SDE noise."""

    steps: tuple[int, ...]
    guidance: tuple[float, ...]
    sampler: str = "euler"
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.guidance) or min(self.steps, default=0) < 1:
            raise ValueError(f"StageSampleConfig needs one step count >= 1 and one guidance scale "
                             f"per stage, got steps {list(self.steps)}, guidance {list(self.guidance)}")


@torch.no_grad()
def generate_multistage(
    model: MultistageNet,
    labels: torch.Tensor,
    stages: StageSampleConfig,
    generator: torch.Generator | None = None,
    return_stages: bool = False,
    use_cache: bool = True,
    on_unit: Callable[[int, torch.Tensor], None] | None = None,
) -> dict:
    """labels (B,) -> {"latents": (B, C, n, n), "stages": [end state of each stage]}.

    ``use_cache=False`` recomputes the whole prefix with the block-causal mask at every
    stage (the training pass); it must give the same result as the cached loop.
    ``on_unit(s, end)`` is called as soon as stage s's end state (B, C, n_s, n_s) exists, so
    a caller can show the image forming while the finer stages still run (``ecar serve``);
    it only reads, and the result is the same with or without it.
    """
    sched = model.schedule
    S, B, C = model.num_stages, labels.shape[0], model.channels
    dev = labels.device
    if len(stages.steps) != S:
        raise ValueError(f"the model has {S} stages but the settings give {len(stages.steps)}")
    steps, scales = stages.steps, stages.guidance
    # the AR pass carries the null-label half while any later stage still guides; after the
    # last guided stage it (and its KV cache) drops to the conditional half
    batch = GuidedLabels(labels, model.null_class, scales)
    cache = model.new_cache() if use_cache else None
    prefix: list[torch.Tensor | None] = []

    n0 = sched.sizes[0]
    start = torch.randn((B, C, n0, n0), generator=generator, device=dev)
    cond = model.ar_input(None, 0, start)  # the AR input of stage 1: nothing decided yet
    report = UnitReport(return_stages, on_unit)
    for s in range(S):
        if batch.at(s, cache) and not use_cache:
            prefix = [None if p is None else p[:B] for p in prefix]
        guide, y = batch.guide, batch.y
        ar_in = torch.cat([cond, cond]) if guide and cond is not None else cond
        if use_cache:
            z = model.condition_step(ar_in, s, y, cache)
        else:
            prefix.append(ar_in)
            z = model.condition(prefix, y)[-1]
        zc = model.head_condition(z)
        z_c, z_u = zc.chunk(2) if guide else (zc, zc)

        def head_fn(x: torch.Tensor, u: torch.Tensor, zz: torch.Tensor, s: int = s) -> torch.Tensor:
            return model.velocity(x, u.expand(x.shape[0]), zz, s)

        v = guided(head_fn, z_c, z_u, constant_scale(scales[s]))
        tokens = integrate(
            stages.sampler, v, model.stage_tokens(start), time_grid(steps[s], device=dev),
            generator, stages.noise_scale,
        )
        end = model.stage_latent(tokens, s)
        report.add(s, lambda: end)
        if s + 1 < S:
            n = sched.sizes[s + 1]
            if sched.flowar:
                start = torch.randn((B, C, n, n), generator=generator, device=dev)
            else:
                start = jump(end, sched.tau[s], sched.sigma[s + 1], n, generator)
            cond = model.ar_input(end, s + 1, start)
    return report.result(end)
