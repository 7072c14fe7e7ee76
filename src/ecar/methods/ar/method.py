"""AR: raster-order causal autoregression with a per-token flow head (MAR's "AR" variant,
arXiv 2406.11838 §5.1), and exact continuous speculative decoding (docs/speculative.md).

A unit is one token. The causal transformer (:mod:`ecar.models.ar`) conditions token i on
the class and tokens < i; the per-token head samples it from noise. Training is MAR's
per-token flow matching on every token (the causal mask replaces the random mask). With the
default sampler ``euler_maruyama`` the head is sampled by the Gaussian chain of
:mod:`ecar.samplers.chain` (noise at every step), whose path density makes speculative
decoding exact: ``ecar sample --ckpt TARGET --draft DRAFT --gamma G`` (its drafting,
:class:`~ecar.methods.ar.draft.ARDrafting`).

Sampling settings (:class:`~ecar.methods.ar.settings.ARSampleConfig`): ``steps`` of the head per token, ``temperature``
of its noise, guidance whose progress is the fraction of tokens generated after the token
(MAR's linear ramp by default), and for speculative decoding ``gamma`` (draft tokens per
target pass) and ``residual_batch`` (candidates per residual try).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from ecar.engine.causal import CausalSampleConfig, generate_causal
from ecar.flow import FlowConfig, drop_labels, interpolate
from ecar.flow.masking import MaskedFlowObjective
from ecar.methods.ar.draft import ARDrafting
from ecar.methods.ar.settings import ARSampleConfig, loop_settings
from ecar.methods.base import Method, scale_count
from ecar.models.ar import AR, ARConfig
from ecar.models.base import LatentSpec

__all__ = ["AR_METHOD", "ARMethod", "ARObjective", "ENTRIES"]

# AR sizes: tiny for tests; small/base as target/draft pairs on digits-sized data (the
# benchmark's pair is set by overrides, benchmarks/speculative_speed.py).
ENTRIES = {
    "ar-tiny": dict(hidden=64, depth=2, heads=4, patch=2, head_width=64, head_depth=2),
    "ar-mini": dict(hidden=192, depth=6, heads=6, patch=2, head_width=256, head_depth=3),
}


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


class ARMethod(Method[AR, ARSampleConfig]):
    name = "ar"
    family = "ar"
    config_cls = ARConfig
    sample_config_cls = ARSampleConfig
    entries = ENTRIES
    drafting = ARDrafting()
    page_settings = ("sampler", "steps", "cfg", "cfg_schedule", "cfg_interval", "temperature")

    def build(self, model_cfg: ARConfig, spec: LatentSpec) -> AR:
        return AR(model_cfg, spec.channels, spec.size, spec.num_classes)

    def objective(self, model: AR, flow: FlowConfig) -> nn.Module:
        return ARObjective(model, flow)

    def loop_settings(self, model: AR, sample: ARSampleConfig) -> CausalSampleConfig:
        """Guidance per token position at progress (i + 1)/N, and the head's settings
        (:func:`~ecar.methods.ar.settings.loop_settings`)."""
        return loop_settings(model, sample, model.cfg.context_time)

    def generate(self, model: AR, sample: ARSampleConfig, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        return generate_causal(model, labels, self.loop_settings(model, sample), generator,
                               return_stages=return_stages, on_unit=on_unit)

    def head(self, model: AR) -> nn.Module:
        return model.head

    def step_counts(self, model: AR, sample: ARSampleConfig) -> list[int]:
        """The head's steps per token: ``[steps] * N``."""
        return [int(sample.steps)] * model.num_tokens

    def scale_steps(self, model: AR, sample: ARSampleConfig, factor: float) -> ARSampleConfig:
        """Head steps × ``factor`` (the token count is fixed by the layout)."""
        return dataclasses.replace(sample, steps=scale_count(sample.steps, factor))


AR_METHOD = ARMethod()
