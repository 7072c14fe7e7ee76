"""Masked flow matching (MAR, arXiv 2406.11838): masking ratios, random masks, the cosine
unmasking schedule, and the objective that trains a per-token head on masked tokens only.

Training (§3.4–3.5 of the paper; docs/mar.md): per image a masking ratio r is drawn from
N(1, 0.25²) truncated to [r_min, 1] (r_min = 0.7), ⌈r·N⌉ of the N tokens chosen uniformly
at random are masked, the bidirectional transformer sees the others and gives a condition
z per token, and the head regresses the velocity x − ε of the masked tokens on the linear
path x_t = (1 − t)·ε + t·x (t = 0 noise, as everywhere in ecar).

Sampling (§3.5, MaskGIT's schedule): K iterations; after iteration k a fraction
cos(π/2·(k+1)/K) of the tokens is still masked (:func:`cosine_unmask_counts`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ecar.flow.objectives import FlowConfig, drop_labels
from ecar.flow.paths import interpolate, target_velocity
from ecar.flow.time import sample_time
from ecar.models.ar import AR
from ecar.models.mar import MAR

__all__ = ["MASKINGS", "MASK_RATIO_MEAN", "MASK_RATIO_STD", "MaskedFlowObjective", "cosine_unmask_counts",
           "mask_ratios", "random_masks", "random_orders"]

MASK_RATIO_MEAN = 1.0
"""Mean of the training masking ratio's normal (MAR: centred at 100 % masking)."""
MASK_RATIO_STD = 0.25
"""Std of the training masking ratio's normal (MAR)."""


MASKINGS = ("truncated_normal", "cosine")
"""Training masking-ratio distributions :func:`mask_ratios` accepts."""


def mask_ratios(n: int, kind: str = "truncated_normal", low: float = 0.7,
                generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) training masking ratios, float64, one uniform draw each (so a seeded generator
    gives the same ratios on any device).

    ``truncated_normal`` (MAR): N(1, 0.25²) truncated to [low, 1], by inverse CDF.
    ``cosine`` (MaskGIT): cos(π/2·u), u ~ U(0, 1) — the ratios the cosine sampling schedule
    visits, (0, 1] (``low`` is not used).
    """
    if kind not in MASKINGS:
        raise ValueError(f"unknown masking {kind!r}; choose one of {', '.join(MASKINGS)}")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if kind == "cosine":
        return torch.cos(math.pi / 2 * u)
    if not 0.0 < low <= 1.0:
        raise ValueError(f"the lowest masking ratio must be in (0, 1], got {low}")
    lo = torch.special.ndtr(torch.tensor((low - MASK_RATIO_MEAN) / MASK_RATIO_STD, dtype=torch.float64))
    hi = torch.special.ndtr(torch.tensor((1.0 - MASK_RATIO_MEAN) / MASK_RATIO_STD, dtype=torch.float64))
    p = lo.to(u.device) + (hi - lo).to(u.device) * u
    r = MASK_RATIO_MEAN + MASK_RATIO_STD * torch.special.ndtri(p)
    return r.clamp(low, 1.0)


def random_orders(batch: int, num_tokens: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(batch, num_tokens) long: an independent uniformly random permutation per row."""
    return torch.rand(batch, num_tokens, generator=generator, device=device).argsort(dim=1)


def random_masks(ratios: torch.Tensor, num_tokens: int,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """ratios (B,) -> (B, num_tokens) bool, True = masked: ⌈ratio·N⌉ tokens (at least 1)
    chosen uniformly at random per image (the first ones of a random order, as MAR does)."""
    b = ratios.shape[0]
    counts = torch.ceil(ratios.double() * num_tokens - 1e-9).long().clamp(1, num_tokens)
    rank = random_orders(b, num_tokens, generator, ratios.device).argsort(dim=1)  # position -> rank
    return rank < counts[:, None]


def cosine_unmask_counts(num_tokens: int, iterations: int) -> list[int]:
    """Tokens unmasked at each of K sampling iterations (MAR / MaskGIT cosine schedule).

    After iteration k (0-based) m_k = ⌊N·cos(π/2·(k+1)/K)⌋ tokens stay masked, at most
    remaining − 1 (every iteration unmasks a token) and none after the last. For K <= N this
    is MAR's schedule exactly: since cos(πx/2) >= 1 − x, m_k >= K − 1 − k, so enough tokens
    are left for the later iterations (the bound is kept as a guard). MAR's code runs K > N
    iterations with some predicting nothing; here K is clamped to N, one token each.
    Returns K' = min(K, N) positive counts that sum to N.
    """
    if num_tokens < 1 or iterations < 1:
        raise ValueError(f"need at least one token and one iteration, got {num_tokens}, {iterations}")
    k_eff = min(iterations, num_tokens)
    counts, remaining = [], num_tokens
    for k in range(k_eff):
        if k == k_eff - 1:
            left = 0
        else:
            left = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / k_eff))
            left = min(max(left, k_eff - 1 - k), remaining - 1)
        counts.append(remaining - left)
        remaining = left
    return counts


class MaskedFlowObjective(nn.Module):
    """MAR training: per-token flow matching on the masked tokens only.

    forward(x (B, C, H, W) clean latents, y (B,) labels, generator) -> {"loss", "mask_ratio"}.

    The network (:class:`ecar.models.mar.MAR`) provides ``tokens(x)`` (B, N, D),
    ``condition(tokens, mask, y)`` (B, N, hidden) — which never reads a masked token's value —
    ``head_condition(z)`` and ``velocity(x_t, t, zc)``; its config gives ``masking``,
    ``mask_ratio_min`` and ``head_batch_mul``. The loss is the MSE between the head's velocity and x − ε, averaged
    over the masked tokens of the batch (and their dims): the head is evaluated on masked
    tokens only, so unmasked tokens cannot enter it. With ``head_batch_mul = m`` every masked
    token is drawn m times with independent (t, ε) for one transformer pass (MAR §5.1).
    """

    model: MAR | AR

    def __init__(self, model: MAR | AR, flow: FlowConfig):
        super().__init__()
        self.model, self.flow = model, flow
        self.head_batch_mul = int(model.cfg.head_batch_mul)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        m = self.model
        tokens = m.tokens(x)
        ratios = mask_ratios(tokens.shape[0], m.cfg.masking, m.cfg.mask_ratio_min, generator, x.device)
        mask = random_masks(ratios, tokens.shape[1], generator)
        y = drop_labels(y, self.flow.class_dropout, m.null_class, generator)
        return self.masked_loss(tokens, y, mask, generator)

    def masked_loss(
        self, tokens: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
        generator: torch.Generator | None = None, context: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss for a given mask: tokens (B, N, D), y (B,) (labels already dropped),
        mask (B, N) bool (True = masked, at least one per batch). ``context`` (B, N, D): what the
        transformer reads in place of the tokens (default: the tokens themselves)."""
        m, f = self.model, self.flow
        z = m.condition(tokens if context is None else context, mask, y)
        x1, zm = tokens[mask], z[mask]  # (n, D), (n, hidden): row-major over (image, position)
        if self.head_batch_mul > 1:
            x1, zm = x1.repeat(self.head_batch_mul, 1), zm.repeat(self.head_batch_mul, 1)
        t = sample_time(x1.shape[0], f.time_sampling, generator=generator, device=x1.device,
                        logit_mean=f.logit_mean, logit_std=f.logit_std)
        noise = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        v = m.velocity(interpolate(noise, x1, t)[None], t[None], m.head_condition(zm[None]))[0]
        loss = (v.float() - target_velocity(noise, x1).float()).pow(2).mean()
        return {"loss": loss, "mask_ratio": mask.float().mean().detach()}
