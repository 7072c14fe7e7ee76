"""E-CAR and FlowAR mode: a stage-causal AR transformer with a flow-matching head over a pyramid.

E-CAR (arXiv 2412.14170; docs/ecar.md) denoises each stage over its window [τ_{s−1}, τ_s]
of the path; FlowAR mode is the same network with every window [0, 1] (``model.mode``),
each stage fully denoised from fresh noise. Both are the family ``ecar`` (one config class,
one network, one objective, one loop) registered as two methods, so reports and sweeps
name them apart.

Sampling settings (:class:`ECARSampleConfig`): ``steps`` per stage, or ``stage_steps``
one count per stage (coarse to fine); guidance progress is stage / (stages − 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ecar.engine import StageSampleConfig, generate_multistage
from ecar.errors import ConfigError
from ecar.flow import FlowConfig, MultistageObjective
from ecar.flow.pyramid import StageSchedule, default_stage_sizes
from ecar.methods.base import Method, scale_count
from ecar.models.base import LatentSpec
from ecar.models.ecar import ECAR, ECARConfig
from ecar.samplers import SampleConfig, guidance_scale
from ecar.schema import check_each, setting

__all__ = ["ECAR_ENTRIES", "ECARMethod", "ECARSampleConfig", "FLOWAR_ENTRIES", "ECAR_METHOD",
           "FLOWAR_METHOD", "stage_guidance", "stage_schedule", "stage_step_counts"]

# E-CAR sizes. The AR transformer follows DiT/MAR widths; the head follows MAR's
# (width ≈ transformer width, 3-8 residual blocks). ``flowar-*`` are the same networks in
# FlowAR mode (every stage fully denoised), for side-by-side comparisons.
ECAR_ENTRIES = {
    "ecar-tiny": dict(hidden=64, depth=2, heads=4, patch=2, head_width=64, head_depth=2),
    "ecar-mini": dict(hidden=192, depth=6, heads=6, patch=2, head_width=256, head_depth=3),
    "ecar-s": dict(hidden=384, depth=12, heads=6, patch=2, head_width=512, head_depth=3),
    "ecar-b": dict(hidden=768, depth=12, heads=12, patch=2, head_width=1024, head_depth=6),
    "ecar-l": dict(hidden=1024, depth=24, heads=16, patch=2, head_width=1024, head_depth=8),
}
FLOWAR_ENTRIES = {
    "flowar-tiny": dict(mode="flowar", hidden=64, depth=2, heads=4, patch=2, head_width=64, head_depth=2),
    "flowar-s": dict(mode="flowar", hidden=384, depth=12, heads=6, patch=2, head_width=512, head_depth=3),
}


@dataclass
class ECARSampleConfig(SampleConfig):
    """E-CAR / FlowAR sampling settings: the shared ones plus per-stage step counts."""

    steps: int = setting(50, "integration steps of every stage (unless stage_steps is given)")
    stage_steps: list[int] | None = setting(
        None, "steps of each stage, coarse to fine (one entry per stage)", metavar="K1,K2,...",
        label="steps per stage (coarse to fine)")

    def validate(self) -> None:
        super().validate()
        check_each("sample.stage_steps", self.stage_steps, 1)  # each entry as sample.steps


def stage_step_counts(sample: ECARSampleConfig, num_stages: int) -> list[int]:
    """Steps per stage: ``stage_steps``, or ``steps`` for every stage."""
    steps = list(sample.stage_steps) if sample.stage_steps else [sample.steps] * num_stages
    if len(steps) != num_stages or min(steps) < 1:
        raise ConfigError(
            f"sample.stage_steps needs {num_stages} entries >= 1 (one per stage of this model), got {steps}"
        )
    return steps


def stage_guidance(sample: SampleConfig, num_stages: int) -> list[float]:
    """Guidance scale per stage; a ``linear`` schedule ramps from 1 (first) to cfg (last)."""
    return [
        guidance_scale(sample.cfg, sample.cfg_schedule, s / max(1, num_stages - 1), sample.cfg_interval)
        for s in range(num_stages)
    ]


def stage_schedule(model_cfg: ECARConfig, latent_size: int) -> StageSchedule:
    """The stage pyramid of ``model_cfg`` over ``latent_size`` latents (sizes, windows, mode)."""
    p = model_cfg.patch
    if latent_size % p:
        raise ValueError(f"latent size {latent_size} is not divisible by model.patch={p}")
    if model_cfg.stages:
        sizes = [g * p for g in model_cfg.stages]
    else:
        sizes = default_stage_sizes(latent_size, p)
    ECAR.check_stage_sizes(sizes, latent_size, p)
    return StageSchedule.build(sizes, model_cfg.windows, flowar=model_cfg.mode == "flowar")


class ECARMethod(Method[ECAR, ECARSampleConfig]):
    """E-CAR (``mode="ecar"``) or FlowAR mode (``mode="flowar"``) of the ``ecar`` family."""

    family = "ecar"
    config_cls = ECARConfig
    sample_config_cls = ECARSampleConfig

    def __init__(self, name: str, mode: str, entries: dict):
        self.name, self.mode, self.entries = name, mode, entries

    def accepts(self, model_cfg) -> bool:
        return isinstance(model_cfg, ECARConfig) and model_cfg.mode == self.mode

    def build(self, model_cfg: ECARConfig, spec: LatentSpec) -> ECAR:
        schedule = stage_schedule(model_cfg, spec.size)
        return ECAR(model_cfg, spec.channels, spec.size, spec.num_classes, schedule)

    def objective(self, model: ECAR, flow: FlowConfig) -> nn.Module:
        return MultistageObjective(model, flow)

    def stage_settings(self, model: ECAR, sample: ECARSampleConfig) -> StageSampleConfig:
        """The per-stage settings the multistage loop runs with."""
        S = model.num_stages
        return StageSampleConfig(tuple(stage_step_counts(sample, S)), tuple(stage_guidance(sample, S)),
                                 sample.sampler, sample.noise_scale)

    def generate(self, model: ECAR, sample: ECARSampleConfig, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        return generate_multistage(model, labels, self.stage_settings(model, sample), generator,
                                   return_stages=return_stages, on_unit=on_unit)

    def head(self, model: ECAR) -> nn.Module:
        return model.head

    def step_counts(self, model: ECAR, sample: ECARSampleConfig) -> list[int]:
        return stage_step_counts(sample, model.num_stages)

    page_settings = ("sampler", "stage_steps", "cfg", "cfg_schedule", "cfg_interval")

    def page_fields(self, model: ECAR, sample: ECARSampleConfig, drafted: bool = False) -> dict[str, Any]:
        """As every method's, with the steps of each stage spelled out (``stage_steps``, or
        ``steps`` for every stage)."""
        return {**super().page_fields(model, sample, drafted), "stage_steps": self.step_counts(model, sample)}

    def scale_steps(self, model: ECAR, sample: ECARSampleConfig, factor: float) -> ECARSampleConfig:
        steps = [scale_count(k, factor) for k in self.step_counts(model, sample)]
        return dataclasses.replace(sample, stage_steps=steps)


ECAR_METHOD = ECARMethod("ecar", "ecar", ECAR_ENTRIES)
FLOWAR_METHOD = ECARMethod("flowar", "flowar", FLOWAR_ENTRIES)
