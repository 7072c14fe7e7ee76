"""MAR: random-order masked autoregression with a per-token flow-matching head
(Li et al., arXiv 2406.11838; docs/mar.md).

A unit is one unmasking iteration: the bidirectional transformer (:mod:`ecar.models.mar`)
conditions the next tokens of each image's random order, and the shared per-token head
integrates them from noise in ``steps`` steps. Training masks a truncated-normal fraction
of each image's tokens and trains the head on those (:mod:`ecar.flow.masking`); sampling is
the loop of :mod:`ecar.engine.masked`.

Sampling settings (:class:`MARSampleConfig`): ``iterations`` K (cosine schedule, at most
the token count), ``steps`` of the head per iteration, ``temperature`` of the head's
noise, and guidance whose progress is the fraction of tokens generated after the
iteration (MAR's linear schedule ramps from 1 to ``cfg`` with it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ecar.engine.masked import MaskedSampleConfig, generate_masked
from ecar.errors import ConfigError, shown
from ecar.flow import FlowConfig
from ecar.flow.masking import MaskedFlowObjective, cosine_unmask_counts
from ecar.methods.base import Method, scale_count
from ecar.models.base import LatentSpec
from ecar.models.mar import MAR, MARConfig
from ecar.samplers import GUIDANCE_SCHEDULES, SampleConfig, guidance_scale
from ecar.schema import setting

__all__ = ["ENTRIES", "MAR_METHOD", "MARMethod", "MARSampleConfig", "iteration_guidance"]

# MAR sizes. tiny/mini for tests and laptops. mar-b/2 follows the paper's MAR-B (§5, README
# of LTH14/mar): its encoder + decoder depth (12 + 12) as one transformer, width 768, head
# MLP 6×1024, diffusion batch multiplier 4; patch 2 on an 8×-downsampled latent gives the
# paper's 16×16 tokens at 256 px (named with the patch, like DiT's entries). MAR-L / MAR-H are
# overrides of it (docs/mar.md); not entries, because every entry is built and trained a step
# in the test suite, and L alone would add ~45 s on two CPU cores.
ENTRIES = {
    "mar-tiny": dict(hidden=64, depth=2, heads=4, patch=2, head_width=64, head_depth=2),
    "mar-mini": dict(hidden=192, depth=6, heads=6, patch=2, head_width=256, head_depth=3),
    "mar-b/2": dict(hidden=768, depth=24, heads=12, patch=2, head_width=1024, head_depth=6, head_batch_mul=4),
}


@dataclass
class MARSampleConfig(SampleConfig):
    """MAR's sampling settings: the shared ones (``steps`` are the head's, per iteration)
    plus the unmasking iterations and the temperature; guidance ramps linearly by default."""

    steps: int = setting(25, "head integration steps of every iteration (for each newly unmasked token)",
                         label="head steps per token")
    cfg_schedule: str = setting(
        "linear", "guidance schedule: linear (default, MAR: ramps from 1 to cfg with the fraction of "
        "tokens generated) or constant", choices=GUIDANCE_SCHEDULES)
    cfg_interval: list[float] | None = setting(
        None, "guide only in iterations whose fraction of tokens generated (after the iteration) is "
        "in [LO, HI]; no unconditional pass elsewhere (default: every iteration)", metavar="LO,HI")
    iterations: int = setting(16, "unmasking iterations K (cosine schedule; more than the token count "
                              "means one token per iteration)", label="unmasking iterations")
    temperature: float = setting(1.0, "multiplies the head's noise: its start noise and, with "
                                 "euler_maruyama, each step's noise (< 1 sharpens)", label="temperature")

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"sample.iterations must be an integer >= 1, got {shown(self.iterations)}")
        if not self.temperature >= 0:
            raise ConfigError(f"sample.temperature must be >= 0, got {self.temperature}")


def iteration_guidance(sample: SampleConfig, counts: list[int]) -> list[float]:
    """Guidance scale per iteration at progress = fraction of tokens generated after it
    (MAR's linear schedule: 1 + (cfg − 1)·(N − still masked)/N; the last iteration has cfg)."""
    total, done, out = sum(counts), 0, []
    for n in counts:
        done += n
        out.append(guidance_scale(sample.cfg, sample.cfg_schedule, done / total, sample.cfg_interval))
    return out


class MARMethod(Method[MAR, MARSampleConfig]):
    name = "mar"
    page_settings = ("iterations", "sampler", "steps", "cfg", "cfg_schedule", "cfg_interval", "temperature")
    family = "mar"
    config_cls = MARConfig
    sample_config_cls = MARSampleConfig
    entries = ENTRIES

    def build(self, model_cfg: MARConfig, spec: LatentSpec) -> MAR:
        return MAR(model_cfg, spec.channels, spec.size, spec.num_classes)

    def objective(self, model: MAR, flow: FlowConfig) -> nn.Module:
        return MaskedFlowObjective(model, flow)

    def loop_settings(self, model: MAR, sample: MARSampleConfig) -> MaskedSampleConfig:
        """The per-iteration settings the masked loop runs with."""
        counts = cosine_unmask_counts(model.num_tokens, sample.iterations)
        return MaskedSampleConfig(tuple(counts), tuple(iteration_guidance(sample, counts)), sample.steps,
                                  sample.sampler, sample.noise_scale, sample.temperature)

    def generate(self, model: MAR, sample: MARSampleConfig, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        return generate_masked(model, labels, self.loop_settings(model, sample), generator,
                               return_stages=return_stages, on_unit=on_unit)

    def head(self, model: MAR) -> nn.Module:
        return model.head

    def step_counts(self, model: MAR, sample: MARSampleConfig) -> list[int]:
        """The head's steps per iteration: ``[steps] * K'`` with K' = min(iterations, tokens)."""
        return [int(sample.steps)] * min(sample.iterations, model.num_tokens)

    def scale_steps(self, model: MAR, sample: MARSampleConfig, factor: float) -> MARSampleConfig:
        """Iterations and head steps both × ``factor`` (iterations at most the token count).

        The transformer runs once per iteration and the head integrates every token once over
        ``steps`` steps, so the sampling cost is about a·K + b·N·steps: scaling both keeps the
        cost linear in the factor, as a step multiplier is for the other methods.
        """
        iterations = min(scale_count(sample.iterations, factor), model.num_tokens)
        return dataclasses.replace(sample, iterations=iterations, steps=scale_count(sample.steps, factor))


MAR_METHOD = MARMethod()
