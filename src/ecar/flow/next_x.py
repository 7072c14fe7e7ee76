"""xAR's training objective: flow matching on every unit at once, each at its own time
(Ren et al., arXiv 2502.20388 §3; docs/xar.md).

For clean latents x (B, C, H, W) split into U units (:class:`ecar.models.xar.XAR`):

1. every (image, unit) draws its own time t_{b,u} (``flow.time_sampling``, logit-normal by
   default) — one :func:`ecar.flow.time.sample_time` call of B·U draws;
2. noise ε is drawn in the units' latent shapes (the whole latent, or one latent per scale),
   x_t = (1 − t_u)·ε + t_u·x for the tokens of unit u (:func:`ecar.flow.paths.interpolate`);
3. labels are dropped to the null class with probability ``flow.class_dropout``;
4. one block-causal pass predicts the velocity of every token; loss = mean over all tokens
   and dims of ‖v − (x − ε)‖².

*Noisy context learning* (xAR's): the context of unit u is the other units' x_t, noised at
their own times, and the network sees each unit's time through its adaLN condition. With
``model.noisy_context: false`` (the ablation) unit u instead sees the *clean* earlier units,
as in sampling, through a two-stream pass (:meth:`XAR.velocity_clean_context`).

The random draws (times, then noise, then label dropout) come in the order of
:class:`ecar.flow.objectives.FlowMatchingObjective`, so one ``image`` unit gives DiT's loss
for the same generator (tested).
"""

from __future__ import annotations

import torch
from torch import nn

from ecar.flow.objectives import FlowConfig, drop_labels
from ecar.flow.paths import interpolate, target_velocity
from ecar.flow.pyramid import downsample
from ecar.flow.time import sample_time
from ecar.models.xar import XAR

__all__ = ["NextXObjective", "unit_latents"]


def unit_latents(model: XAR, x: torch.Tensor) -> list[torch.Tensor]:
    """The latents the units of ``model`` cut into tokens: [x], or x area-downsampled to each
    scale (coarse to fine, the pyramid of :mod:`ecar.flow.pyramid`)."""
    return [downsample(x, side) for side in model.unit_sizes]


class NextXObjective(nn.Module):
    """forward(x (B, C, H, W), y (B,), generator) -> {"loss": scalar} (module docstring)."""

    model: XAR

    def __init__(self, model: XAR, flow: FlowConfig):
        super().__init__()
        self.model, self.flow = model, flow

    def forward(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        m, f = self.model, self.flow
        B, U = x.shape[0], m.num_units
        t = sample_time(B * U, f.time_sampling, generator=generator, device=x.device,
                        logit_mean=f.logit_mean, logit_std=f.logit_std).reshape(B, U)
        latents = unit_latents(m, x)
        noise = [torch.randn(z.shape, generator=generator, device=x.device, dtype=x.dtype) for z in latents]
        y = drop_labels(y, f.class_dropout, m.null_class, generator)
        clean, eps = m.sequence(latents), m.sequence(noise)
        x_t = interpolate(eps, clean, t[:, m.unit_of])
        if m.cfg.noisy_context:
            v = m.velocity_seq(x_t, t, y)
        else:
            v = m.velocity_clean_context(clean, x_t, t, y)
        loss = (v.float() - target_velocity(eps, clean).float()).pow(2).mean()
        return {"loss": loss}
