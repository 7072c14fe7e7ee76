"""Training objectives: each wraps a network and returns a dict of losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ecar.errors import ConfigError
from ecar.flow.paths import interpolate, target_velocity
from ecar.flow.pyramid import stage_pair, stage_targets
from ecar.flow.time import TIME_SAMPLINGS, sample_time
from ecar.models.base import ClassConditional
from ecar.models.ecar import ECAR
from ecar.schema import check_choice, check_range


@dataclass
class FlowConfig:
    """Flow-matching training choices shared by all methods (the ``flow`` section of a recipe)."""

    time_sampling: str = "logit_normal"
    """``uniform`` or ``logit_normal`` (SD3-style, density on the middle of the path)."""
    logit_mean: float = 0.0
    logit_std: float = 1.0
    class_dropout: float = 0.1
    """Probability of replacing the label by the null class (enables classifier-free guidance)."""

    def validate(self) -> None:
        check_choice("flow.time_sampling", self.time_sampling, TIME_SAMPLINGS)
        check_range("flow.logit_std", self.logit_std, 0, low_open=True)
        if not 0.0 <= self.class_dropout < 1.0:
            raise ConfigError("flow.class_dropout must be in [0, 1)")


def drop_labels(
    y: torch.Tensor, p: float, null_class: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Replace each label by ``null_class`` with probability ``p`` (classifier-free guidance)."""
    if p <= 0:
        return y
    drop = torch.rand(y.shape[0], generator=generator, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_class), y)


class FlowMatchingObjective(nn.Module):
    """Full-image flow matching (DiT baseline): ||v(x_t, t, y) − (x − ε)||².

    forward(x (B, C, H, W) clean latents, y (B,) labels, generator) -> {"loss": scalar}
    """

    model: ClassConditional

    def __init__(self, model: ClassConditional, flow: FlowConfig):
        super().__init__()
        self.model, self.flow = model, flow

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        f = self.flow
        t = sample_time(
            x.shape[0], f.time_sampling, generator=generator, device=x.device,
            logit_mean=f.logit_mean, logit_std=f.logit_std,
        )
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        y = drop_labels(y, f.class_dropout, self.model.null_class, generator)
        v = self.model(interpolate(noise, x, t), t, y)
        loss = (v.float() - target_velocity(noise, x).float()).pow(2).mean()
        return {"loss": loss}


class MultistageObjective(nn.Module):
    """E-CAR / FlowAR training: every stage of every image in one pass (DESIGN "E-CAR as we build it").

    One block-causal pass of the AR transformer over all stages' inputs gives the condition
    z of every token; each stage draws its own u per image; the head regresses the stage
    velocity b_s − a_s at x_u = (1 − u)·a_s + u·b_s. The loss is the mean over stages
    (weights ``model.stage_weights``) of each stage's per-token MSE, so the few coarse
    tokens count as much as the many fine ones.

    With ``model.head_batch_mul = m > 1`` the head sees m independent draws of (a_s, b_s, u)
    per token for the same AR pass (MAR's "diffusion batch multiplier", arXiv 2406.11838
    §5.1): z is reused, the extra draws come from :func:`ecar.flow.pyramid.stage_pair`
    given the same previous end state, so they are exact samples of the stage's conditional
    targets. The AR pass dominates a step's cost, so this buys the head (and the gradient
    into z) m× the samples for little time.
    """

    model: ECAR
    weights: torch.Tensor
    """(S,) the stages' loss weights, summing to 1 (buffer)."""

    def __init__(self, model: ECAR, flow: FlowConfig):
        super().__init__()
        self.model, self.flow = model, flow
        S = model.num_stages
        w = model.cfg.stage_weights or [1.0] * S
        if len(w) != S:
            raise ValueError(f"model.stage_weights has {len(w)} entries for {S} stages")
        self.register_buffer("weights", torch.tensor(w) / sum(w), persistent=False)
        self.head_batch_mul = int(model.cfg.head_batch_mul)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        m, f = self.model, self.flow
        S, B, M = m.num_stages, x.shape[0], self.head_batch_mul
        targets = stage_targets(x, m.schedule, generator)
        y = drop_labels(y, f.class_dropout, m.null_class, generator)
        z = m.condition([m.ar_input(targets[s - 1]["end"] if s else None, s, t["start"])
                         for s, t in enumerate(targets)], y)
        u = sample_time(
            B * S * M, f.time_sampling, generator=generator, device=x.device,
            logit_mean=f.logit_mean, logit_std=f.logit_std,
        ).reshape(M, B, S).transpose(0, 1).reshape(B * M, S)  # draw 0 of image i = row i·M
        xs, vs, counts = [], [], []
        clean = [t["clean"] for t in targets]
        for s, tg in enumerate(targets):
            pairs = [(tg["start"], tg["end"])]
            prev = targets[s - 1]["end"] if s else None
            pairs += [stage_pair(clean, s, m.schedule, prev, generator) for _ in range(M - 1)]
            # (B·M, ...) with the M draws of an image next to each other, matching z.repeat_interleave
            a = torch.stack([m.stage_tokens(p[0]) for p in pairs], 1).flatten(0, 1)
            b = torch.stack([m.stage_tokens(p[1]) for p in pairs], 1).flatten(0, 1)
            xs.append(interpolate(a, b, u[:, s]))
            vs.append(b - a)
            counts.append(a.shape[1])
        zz = torch.cat(z, 1)
        if M > 1:
            zz = zz.repeat_interleave(M, dim=0)
        pred = m.velocity_all(torch.cat(xs, 1), u, zz)  # u: one time per (image, stage)
        err = (pred.float() - torch.cat(vs, 1).float()).pow(2)
        per_stage = torch.stack([e.mean() for e in err.split(counts, dim=1)])
        out = {"loss": (per_stage * self.weights).sum()}
        for s in range(S):
            out[f"loss_stage{s + 1}"] = per_stage[s].detach()
        return out
