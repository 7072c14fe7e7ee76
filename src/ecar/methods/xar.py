"""xAR: next-X prediction with noisy context learning (Ren et al., arXiv 2502.20388; docs/xar.md).

A unit — a token, a k×k cell, a scale of the pyramid or the whole image (``model.unit``) —
is one autoregressive step. One block-causal transformer (:mod:`ecar.models.xar`) predicts
the velocity of every unit; in training every unit, context included, is noised at its own
time (:mod:`ecar.flow.next_x`); sampling integrates unit after unit with the earlier, clean
units in a KV cache (:mod:`ecar.engine.next_x`).

Sampling settings (:class:`XARSampleConfig`): ``steps`` per unit, the integrator, and
guidance whose progress is the fraction of units generated after the unit ((u + 1) / U), so
the default ``linear`` schedule ramps from about 1 (first unit) to ``cfg`` (last unit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ecar.engine.next_x import NextXSampleConfig, generate_next_x
from ecar.errors import ConfigError
from ecar.flow import FlowConfig
from ecar.flow.next_x import NextXObjective
from ecar.methods.base import Method, scale_count
from ecar.models.base import LatentSpec
from ecar.models.xar import XAR, XARConfig
from ecar.samplers import GUIDANCE_SCHEDULES, SampleConfig, guidance_scale
from ecar.schema import setting

__all__ = ["ENTRIES", "XAR_METHOD", "XARMethod", "XARSampleConfig", "unit_guidance"]

# xAR sizes: tiny/mini for tests and laptops. xAR-B of the paper (width 768, 24 blocks,
# 172M) is the override model.hidden=768 model.depth=24 model.heads=12 (docs/xar.md); it is
# not an entry because every entry is built and trained a step in the test suite.
ENTRIES = {
    "xar-tiny": dict(hidden=64, depth=2, heads=4, patch=2, unit="cell", cell=2),
    "xar-mini": dict(hidden=192, depth=6, heads=6, patch=2, unit="cell", cell=2),
}


@dataclass
class XARSampleConfig(SampleConfig):
    """xAR's sampling settings: the shared ones, ``steps`` per unit, guidance ramped over units."""

    steps: int = setting(10, "integration steps of every unit", label="steps per unit")
    cfg_schedule: str = setting(
        "linear", "guidance schedule: linear (default, xAR: ramps from 1 to cfg with the fraction of units "
        "generated) or constant", choices=GUIDANCE_SCHEDULES)
    cfg_interval: list[float] | None = setting(
        None, "guide only units whose fraction of units generated (after the unit) is in [LO, HI]; no "
        "unconditional pass elsewhere (default: every unit)", metavar="LO,HI")
    context_time: float = setting(
        1.0, "time at which finished units enter the context: 1 = clean (default); below 1 each is "
        "re-noised once with fresh noise, like the noisy context of training",
        label="context time (1 = clean)")

    def validate(self) -> None:
        super().validate()
        if not 0.0 < self.context_time <= 1.0:
            raise ConfigError(f"sample.context_time must be in (0, 1] (1 = clean context), got {self.context_time}")


def unit_guidance(sample: SampleConfig, units: int) -> list[float]:
    """Guidance scale per unit at progress (u + 1) / U (the last unit gets ``cfg``; one
    ``image`` unit is guided at ``cfg`` throughout)."""
    return [guidance_scale(sample.cfg, sample.cfg_schedule, (u + 1) / units, sample.cfg_interval)
            for u in range(units)]


class XARMethod(Method[XAR, XARSampleConfig]):
    name = "xar"
    page_settings = ("sampler", "steps", "cfg", "cfg_schedule", "cfg_interval", "context_time")
    family = "xar"
    config_cls = XARConfig
    sample_config_cls = XARSampleConfig
    entries = ENTRIES

    def build(self, model_cfg: XARConfig, spec: LatentSpec) -> XAR:
        return XAR(model_cfg, spec.channels, spec.size, spec.num_classes)

    def objective(self, model: XAR, flow: FlowConfig) -> nn.Module:
        return NextXObjective(model, flow)

    def loop_settings(self, model: XAR, sample: XARSampleConfig) -> NextXSampleConfig:
        """The per-unit settings the next-X loop runs with."""
        U = model.num_units
        return NextXSampleConfig(tuple(self.step_counts(model, sample)), tuple(unit_guidance(sample, U)),
                                 sample.sampler, sample.noise_scale, sample.context_time)

    def generate(self, model: XAR, sample: XARSampleConfig, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        return generate_next_x(model, labels, self.loop_settings(model, sample), generator,
                               return_stages=return_stages, on_unit=on_unit)

    def step_counts(self, model: XAR, sample: XARSampleConfig) -> list[int]:
        """``[steps] * U``: every unit is integrated over the whole path."""
        return [int(sample.steps)] * model.num_units

    def scale_steps(self, model: XAR, sample: XARSampleConfig, factor: float) -> XARSampleConfig:
        return dataclasses.replace(sample, steps=scale_count(sample.steps, factor))


XAR_METHOD = XARMethod()
