"""AR: raster-order causal autoregression with a per-token flow head (MAR's "AR" variant,
arXiv 2406.11838 §5.1), and exact continuous speculative decoding (docs/speculative.md).

A unit is one token. The causal transformer (:mod:`ecar.models.ar`) conditions token i on
the class and tokens < i; the per-token head samples it from noise. Training is MAR's
per-token flow matching on every token (the causal mask replaces the random mask). With the
default sampler ``euler_maruyama`` the head is sampled by the Gaussian chain of
:mod:`ecar.samplers.chain` (noise at every step), whose path density makes speculative
decoding exact: ``ecar sample --ckpt TARGET --draft DRAFT --gamma G`` (:meth:`ARMethod.speculative`).

Sampling settings (:class:`ARSampleConfig`): ``steps`` of the head per token, ``temperature``
of its noise, guidance whose progress is the fraction of tokens generated after the token
(MAR's linear ramp by default), and for speculative decoding ``gamma`` (draft tokens per
target pass) and ``residual_batch`` (candidates per residual try).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ecar.engine.causal import CausalSampleConfig, generate_causal
from ecar.engine.speculative import AUTO, VERIFY_MODES, generate_speculative
from ecar.errors import ConfigError, shown
from ecar.flow import FlowConfig, drop_labels, interpolate
from ecar.flow.masking import MaskedFlowObjective
from ecar.methods.base import Method, scale_count
from ecar.models.ar import AR, ARConfig
from ecar.models.base import LatentSpec
from ecar.samplers import GUIDANCE_SCHEDULES, SAMPLER_NAMES, SampleConfig, guidance_scale
from ecar.schema import check_choice, setting

__all__ = ["AR_METHOD", "ARMethod", "ARObjective", "ARSampleConfig", "ENTRIES"]

# AR sizes: tiny for tests; small/base as target/draft pairs on digits-sized data (the
# benchmark's pair is set by overrides, benchmarks/speculative_speed.py).
ENTRIES = {
    "ar-tiny": dict(hidden=64, depth=2, heads=4, patch=2, head_width=64, head_depth=2),
    "ar-mini": dict(hidden=192, depth=6, heads=6, patch=2, head_width=256, head_depth=3),
}


@dataclass
class ARSampleConfig(SampleConfig):
    """AR's sampling settings: the shared ones (``steps`` are the head's, per token; the
    default sampler is the Gaussian chain) plus temperature and speculative decoding's."""

    sampler: str = setting("euler_maruyama", "integrator", choices=SAMPLER_NAMES)
    steps: int = setting(25, "head steps per token (the Gaussian chain's K with euler_maruyama)")
    cfg_schedule: str = setting(
        "linear", "guidance schedule: linear (default, as MAR: ramps from 1 to cfg with the fraction of "
        "tokens generated after the token) or constant", choices=GUIDANCE_SCHEDULES)
    cfg_interval: list[float] | None = setting(
        None, "guide only tokens whose fraction of tokens generated (after the token) is in [LO, HI] "
        "(default: every token)", metavar="LO,HI")
    temperature: float = setting(1.0, "multiplies the head's noise: its start noise and, with "
                                 "euler_maruyama, each step's noise (< 1 sharpens)")
    time_power: float = setting(1.0, "head time grid t_k = chain_end·(1 − (1 − k/K)^p): p > 1 takes finer "
                                "steps near the data, where the chain's last noise would stay in the sample")
    chain_end: float | None = setting(
        None, "euler_maruyama: the Gaussian chain stops at this time (< 1) and one deterministic Euler step "
        "of the head finishes the output token, while the next tokens condition on the chain's state "
        "(docs/speculative.md); default: the model's context_time (1 unless trained for it)")
    gamma: int | str = setting(AUTO, "speculative decoding (ecar sample --draft): tokens the draft proposes per "
                               "verification (1: the draft speculates each token's chain steps only; 0: plain "
                               "decoding), or auto: chosen per call from the measured costs and acceptance at the "
                               "call's batch size, 0 where speculation would not pay (docs/speculative.md)",
                               metavar="G|auto")
    residual_batch: int = setting(8, "speculative decoding: candidate paths drawn at once when a "
                                  "rejected token is resampled from the residual (verify=path)")
    verify: str = setting("step", "speculative decoding: accept each Gaussian step of a proposed token's "
                          "chain (step; a rejected step is redrawn and the rest speculated again) or its "
                          "whole path (path); both exact, step the faster in benchmarks/speculative_speed.py",
                          choices=VERIFY_MODES)

    def validate(self) -> None:
        super().validate()
        if not self.temperature >= 0:
            raise ConfigError(f"sample.temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.residual_batch, int) or self.residual_batch < 1:
            raise ConfigError(f"sample.residual_batch must be an integer >= 1, got {shown(self.residual_batch)}")
        if self.gamma != AUTO and (not isinstance(self.gamma, int) or self.gamma < 0):
            raise ConfigError(f"sample.gamma must be an integer >= 0 (0: plain decoding) or {AUTO}, got "
                              f"{shown(self.gamma)}")
        check_choice("sample.verify", self.verify, VERIFY_MODES)
        if not self.time_power > 0 or not (self.chain_end is None or 0 < self.chain_end <= 1):
            raise ConfigError(f"sample.time_power must be > 0 and sample.chain_end in (0, 1]; got "
                              f"{shown(self.time_power)}, {shown(self.chain_end)}")
        if self.chain_end is not None and self.chain_end < 1 and self.sampler != "euler_maruyama":
            raise ConfigError(f"sample.chain_end < 1 stops the Gaussian chain early (sampler euler_maruyama); "
                              f"the {self.sampler} ODE integrates to t = 1: leave chain_end at 1")


class ARObjective(MaskedFlowObjective):
    """Per-token flow matching on every token of the causal model (the masked loss with
    every token "masked": the causal network never reads the token it conditions).

    forward(x (B, C, H, W), y (B,), generator) -> {"loss", "mask_ratio" (= 1)}."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        m = self.model
        tokens = m.tokens(x)
        y = drop_labels(y, self.flow.class_dropout, m.null_class, generator)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        c = m.cfg.context_time
        context = None
        if c < 1:  # the transformer reads tokens at flow time c, as the chain's state at sample.chain_end
            noise = torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
            context = interpolate(noise, tokens, torch.full(tokens.shape[:1], c, device=tokens.device))
        return self.masked_loss(tokens, y, mask, generator, context)


class ARMethod(Method):
    name = "ar"
    family = "ar"
    config_cls = ARConfig
    sample_config_cls = ARSampleConfig
    entries = ENTRIES

    def build(self, model_cfg: ARConfig, spec: LatentSpec) -> nn.Module:
        return AR(model_cfg, spec.channels, spec.size, spec.num_classes)

    def objective(self, model: nn.Module, flow: FlowConfig) -> nn.Module:
        return ARObjective(model, flow)

    def loop_settings(self, model: nn.Module, sample: ARSampleConfig) -> CausalSampleConfig:
        """Guidance per token position at progress (i + 1)/N, and the head's settings."""
        n = model.num_tokens
        scales = tuple(guidance_scale(sample.cfg, sample.cfg_schedule, (i + 1) / n, sample.cfg_interval)
                       for i in range(n))
        end = sample.chain_end
        if end is None:  # the time the transformer was trained to read (ODE samplers end at 1)
            end = model.cfg.context_time if sample.sampler == "euler_maruyama" else 1.0
        return CausalSampleConfig(scales, sample.steps, sample.sampler, sample.noise_scale, sample.temperature,
                                  sample.time_power, end)

    def generate(self, model: nn.Module, sample: ARSampleConfig, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        return generate_causal(model, labels, self.loop_settings(model, sample), generator,
                               return_stages=return_stages, on_unit=on_unit)

    def speculative(self, target: nn.Module, draft: nn.Module, sample: ARSampleConfig, labels: torch.Tensor,
                    generator: torch.Generator | None = None) -> dict:
        """Samples of ``target`` at ``sample``'s settings, proposed by ``draft``:
        ``{"latents", "stats", "source"}`` (:func:`ecar.engine.speculative.generate_speculative`)."""
        settings = self.loop_settings(target, sample)
        if settings.sampler != "euler_maruyama" or not sample.temperature > 0 or not sample.noise_scale > 0:
            raise ConfigError(
                f"speculative decoding needs the head's Gaussian chain: sample.sampler=euler_maruyama with "
                f"temperature > 0 and noise_scale > 0 (got {sample.sampler}, {sample.temperature}, "
                f"{sample.noise_scale}); the ODE samplers have no path density to compare")
        return generate_speculative(target, draft, labels, settings, sample.gamma, sample.residual_batch, generator,
                                    verify=sample.verify)

    def step_counts(self, model: nn.Module, sample: ARSampleConfig) -> list[int]:
        """The head's steps per token: ``[steps] * N``."""
        return [int(sample.steps)] * model.num_tokens

    def scale_steps(self, model: nn.Module, sample: ARSampleConfig, factor: float) -> ARSampleConfig:
        """Head steps × ``factor`` (the token count is fixed by the layout)."""
        return dataclasses.replace(sample, steps=scale_count(sample.steps, factor))


AR_METHOD = ARMethod()
