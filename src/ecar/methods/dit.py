"""DiT: one unit, the whole latent integrated from noise to data by the big transformer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ecar.engine import generate_single_unit
from ecar.flow import FlowConfig, FlowMatchingObjective
from ecar.methods.base import Method, scale_count
from ecar.models.base import LatentSpec
from ecar.models.dit import DiT, DiTConfig
from ecar.samplers import SampleConfig

# DiT sizes: tiny/small for tests and laptops, S/B/L/XL with patch 2 as in the DiT paper (Table 1).
ENTRIES = {
    "dit-tiny": dict(hidden=64, depth=2, heads=4, patch=2),
    "dit-mini": dict(hidden=192, depth=6, heads=6, patch=2),
    "dit-s/2": dict(hidden=384, depth=12, heads=6, patch=2),
    "dit-b/2": dict(hidden=768, depth=12, heads=12, patch=2),
    "dit-l/2": dict(hidden=1024, depth=24, heads=16, patch=2),
    "dit-xl/2": dict(hidden=1152, depth=28, heads=16, patch=2),
}


@dataclass
class DiTSampleConfig(SampleConfig):
    """DiT's sampling settings: ``steps`` integrate the whole latent over t ∈ [0, 1];
    guidance progress is the time t."""


class DiTMethod(Method[DiT, SampleConfig]):
    name = "dit"
    family = "dit"
    config_cls = DiTConfig
    sample_config_cls = DiTSampleConfig
    entries = ENTRIES

    def build(self, model_cfg: DiTConfig, spec: LatentSpec) -> DiT:
        return DiT(model_cfg, spec.channels, spec.size, spec.num_classes)

    def objective(self, model: DiT, flow: FlowConfig) -> nn.Module:
        return FlowMatchingObjective(model, flow)

    def generate(self, model: DiT, sample: SampleConfig, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        return generate_single_unit(model, labels, sample, generator, return_stages=return_stages,
                                    on_unit=on_unit)

    def step_counts(self, model: DiT, sample: SampleConfig) -> int:
        return int(sample.steps)

    def scale_steps(self, model: DiT, sample: SampleConfig, factor: float) -> SampleConfig:
        return dataclasses.replace(sample, steps=scale_count(sample.steps, factor))


DIT = DiTMethod()
