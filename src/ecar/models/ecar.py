"""E-CAR: stage-causal AR transformer + flow-matching head (arXiv 2412.14170; docs/ecar.md).

Sequence layout: [class token] + tokens of stage 1 + … + tokens of stage S, where stage s
contributes the g_s×g_s tokens of its AR input: the previous stage's end state, upsampled
(zeros for stage 1; docs/ecar.md explains why not the start state a_s). A token of stage s
attends to the class token, all earlier stages and its own stage (both ways) — a
block-causal mask, so one pass trains every stage and sampling can cache earlier stages'
keys/values.

The head predicts the velocity of a stage's tokens from (x_u, u, z): per-token adaLN MLP
(MAR-like, default) or a small transformer over the stage's tokens. A pure ``nn.Module``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ecar.errors import ConfigError, shown
from ecar.layers import AdaLNBlock, KVCache, LabelEmbedder, grid_positions, patchify, unpatchify, upsample
from ecar.models.base import ClassConditional, TransformerConfig, init_input_layers
from ecar.models.heads import HEAD_CONDS, HEAD_KINDS, TokenHead, x_to_velocity
from ecar.schema import check_each

AR_INPUTS = ("upsampled", "parent")
"""What the AR transformer reads for stage s (``model.ar_input``):

* ``upsampled``: the previous stage's end state upsampled to stage s's grid (zeros for
  stage 1); the output at each of stage s's tokens is that token's condition.
* ``parent``: the previous stage's end state at its own grid (nothing for stage 1: the class
  token alone); the output at each parent token is expanded by a linear map into the
  conditions of its r×r children at stage s (r = g_s / g_{s−1}). The pass never runs over
  the finest grid: with a factor-2 pyramid it covers ≈ 1/4 of the tokens (docs/ecar.md).
"""


@dataclass
class ECARConfig(TransformerConfig):
    """E-CAR / FlowAR architecture (AR transformer fields from TransformerConfig) and stages."""

    name: str = "ecar-tiny"
    mode: str = "ecar"
    """``ecar`` (partial denoising per stage) or ``flowar`` (every window [0, 1])."""
    stages: list[int] | None = None
    """Token grids coarse to fine (e.g. [1, 2, 4, 8]); None = 1, 2, 4, … up to the full grid."""
    windows: list[float] | None = None
    """Interior window ends τ_1..τ_{S−1}; None = uniform s/S. Ignored in FlowAR mode."""
    head: str = "mlp"
    """``mlp`` (per-token adaLN MLP) or ``transformer`` (stage-local attention)."""
    head_width: int = 128
    head_depth: int = 3
    head_heads: int = 4
    head_mlp_ratio: float | None = None
    """MLP ratio of the transformer head's blocks (None = ``mlp_ratio``)."""
    head_cond: str = "token"
    """How the head is conditioned on (u, z): ``token``, ``stage`` or ``add``
    (:data:`ecar.models.heads.HEAD_CONDS`; cost per step falls in that order)."""
    ar_input: str = "upsampled"
    """``upsampled`` or ``parent`` (:data:`AR_INPUTS`)."""
    stage_weights: list[float] | None = field(default=None)
    """Loss weight per stage (None = every stage counts equally)."""
    prediction: str = "v"
    """What the head outputs: ``v`` (the stage velocity b_s − a_s) or ``x`` (the stage's end
    state b_s; the velocity is then (x̂ − x_u) / (1 − u), clamped at 1 − u >= 0.05 —
    "let denoising models denoise", Li & He, arXiv 2511.13720). The loss is on the velocity
    either way."""
    head_grid_out: int = 0
    """0: the head's last layer maps each token's hidden state to that token's patch alone, so
    neighbouring tokens' outputs meet at their border with nothing to match them (the seams of
    docs/ecar.md "No ceiling"). F > 0: it maps to F features per latent pixel instead, and a
    3×3 convolution over each stage's latent grid turns them into the output, so every border
    pixel's output reads its neighbours' features across the token border."""
    head_batch_mul: int = 1
    """Training only: draws of (start, end, u) per token the head sees per AR pass (MAR's
    diffusion batch multiplier; 1 = one draw)."""

    def validate(self) -> None:
        super().validate()
        if self.mode not in ("ecar", "flowar"):
            raise ConfigError(f"model.mode={shown(self.mode)}; choose ecar or flowar")
        if self.prediction not in ("v", "x"):
            raise ConfigError(f"model.prediction={shown(self.prediction)}; choose v or x")
        if self.head not in HEAD_KINDS:
            raise ConfigError(f"model.head={shown(self.head)}; choose mlp or transformer")
        if self.head_cond not in HEAD_CONDS:
            raise ConfigError(f"model.head_cond={shown(self.head_cond)}; choose {', '.join(HEAD_CONDS)}")
        if self.ar_input not in AR_INPUTS:
            raise ConfigError(f"model.ar_input={shown(self.ar_input)}; choose {', '.join(AR_INPUTS)}")
        if self.head_mlp_ratio is not None and not self.head_mlp_ratio * self.head_width >= 1:
            raise ConfigError(f"model.head_mlp_ratio={shown(self.head_mlp_ratio)} is not valid: "
                              "the head's MLP needs head_mlp_ratio·head_width >= 1 (or null for mlp_ratio)")
        if not isinstance(self.head_grid_out, int) or self.head_grid_out < 0:
            raise ConfigError(f"model.head_grid_out must be an integer >= 0, got {shown(self.head_grid_out)}")
        if not isinstance(self.head_batch_mul, int) or self.head_batch_mul < 1:
            raise ConfigError(f"model.head_batch_mul must be an integer >= 1, got {shown(self.head_batch_mul)}")
        for name in ("head_width", "head_depth", "head_heads"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"model.{name}={shown(value)} is not valid: it must be >= 1")
        if self.head == "transformer" and (self.head_width % self.head_heads or self.head_width % 4):
            raise ConfigError("model.head_width must be divisible by model.head_heads and 4")
        self._validate_stages()

    def _validate_stages(self) -> None:
        """``stages``, ``windows`` and ``stage_weights`` on their own and against each other:
        what :class:`ecar.flow.pyramid.StageSchedule` would otherwise reject at build time."""
        stages, windows, weights = self.stages, self.windows, self.stage_weights
        check_each("model.stages", stages, 1, meaning="a token grid")
        check_each("model.windows", windows if self.mode == "ecar" else None, 0, 1, low_open=True,
                   high_open=True, meaning="an interior window end")
        check_each("model.stage_weights", weights, 0, meaning="a loss weight")
        if stages is not None:
            if not stages or min(stages) < 1:
                raise ConfigError(f"model.stages={shown(stages)} is not valid: token grids >= 1, coarse "
                                  "to fine (e.g. [1, 2, 4, 8]), or null for 1, 2, 4, ... up to the full grid")
            if any(b <= a or b % a for a, b in zip(stages, stages[1:])):
                raise ConfigError(f"model.stages={shown(stages)} is not valid: each grid must be smaller "
                                  "than the next and divide it (e.g. [1, 2, 4, 8])")
        if windows is not None and self.mode == "ecar":
            tau = list(windows) + [1.0]
            if any(not 0.0 < t <= 1.0 for t in tau) or any(b <= a for a, b in zip(tau, tau[1:])):
                raise ConfigError(f"model.windows={shown(windows)} is not valid: the interior window ends "
                                  "must increase strictly inside (0, 1), e.g. [0.25, 0.5, 0.75]")
            if stages is not None and len(windows) != len(stages) - 1:
                raise ConfigError(f"model.windows has {len(windows)} entries but model.stages has "
                                  f"{len(stages)} stages: give {len(stages) - 1} interior window ends")
        if weights is not None:
            if not weights or min(weights) < 0 or not sum(weights) > 0:
                raise ConfigError(f"model.stage_weights={shown(weights)} is not valid: one weight >= 0 "
                                  "per stage, not all 0 (or null for equal weights)")
            if stages is not None and len(weights) != len(stages):
                raise ConfigError(f"model.stage_weights has {len(weights)} entries for "
                                  f"{len(stages)} stages (model.stages)")

    def validate_latent(self, size: int) -> None:
        """The patch tiles the latent and the stages end at its token grid (or, without
        ``model.stages``, the grid is a power of two, as the default pyramid needs)."""
        super().validate_latent(size)
        grid = size // self.patch
        if self.stages is None:
            if grid & (grid - 1):
                raise ConfigError(
                    f"the token grid is {grid}×{grid} (latent {size} / model.patch={self.patch}), not a "
                    "power of two, so the default stages 1, 2, 4, ... cannot reach it: set model.stages "
                    f"(ending at {grid}) or another data.resolution / model.patch")
            num_stages = grid.bit_length()
        else:
            if self.stages[-1] != grid:
                raise ConfigError(
                    f"model.stages={shown(self.stages)} must end at the full token grid {grid} "
                    f"(latent {size} / model.patch={self.patch})")
            num_stages = len(self.stages)
        if self.mode == "ecar" and self.windows is not None and len(self.windows) != num_stages - 1:
            raise ConfigError(f"model.windows has {len(self.windows)} entries for {num_stages} stages: "
                              f"give {num_stages - 1} interior window ends")
        if self.stage_weights is not None and len(self.stage_weights) != num_stages:
            raise ConfigError(f"model.stage_weights has {len(self.stage_weights)} entries for "
                              f"{num_stages} stages")


class ECAR(ClassConditional):
    """Stage-causal AR transformer with a flow-matching head over C×size×size latents.

    ``schedule`` is the stage pyramid (:class:`ecar.flow.pyramid.StageSchedule`): the
    network reads only its latent sides ``schedule.sizes`` (coarse to fine, the last one
    ``size``) and keeps it as ``self.schedule`` for the objective and the generation loop.
    """

    def __init__(self, cfg: ECARConfig, channels: int, size: int, num_classes: int, schedule: Any):
        super().__init__()
        self.cfg, self.channels, self.size, self.num_classes = cfg, channels, size, num_classes
        p = cfg.patch
        if size % p:
            raise ValueError(f"latent size {size} is not divisible by model.patch={p}")
        grid = size // p
        sizes = list(schedule.sizes)
        self.check_stage_sizes(sizes, size, p)
        self.schedule = schedule
        self.grids = [n // p for n in sizes]
        token_dim = channels * p * p
        self.token_dim = token_dim

        self.embed = nn.Linear(token_dim, cfg.hidden)
        self.y_embed = LabelEmbedder(num_classes, cfg.hidden)
        self.stage_embed = nn.Embedding(len(sizes), cfg.hidden)
        for s, g in enumerate(self.grids):
            self.register_buffer(f"pos{s}", grid_positions(g, cfg.hidden, frame=grid)[None], persistent=False)
            if cfg.head == "transformer":
                self.register_buffer(
                    f"hpos{s}", grid_positions(g, cfg.head_width, frame=grid)[None], persistent=False
                )
        self.blocks = nn.ModuleList(
            AdaLNBlock(cfg.hidden, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.hidden, eps=1e-6)
        self.head = TokenHead(token_dim, cfg.hidden, cfg.head_width, cfg.head_depth, kind=cfg.head,
                              heads=cfg.head_heads, mlp_ratio=cfg.head_mlp_ratio or cfg.mlp_ratio,
                              cond=cfg.head_cond,
                              grid_out=(cfg.head_grid_out, channels, p) if cfg.head_grid_out else None)
        self.parent = cfg.ar_input == "parent"
        if self.parent:  # parent token -> its r×r children's conditions (stage 1: the class token's)
            ratios = [self.grids[0]] + [b // a for a, b in zip(self.grids, self.grids[1:])]
            self.ratios = ratios
            self.expand = nn.ModuleList(nn.Linear(cfg.hidden, r * r * cfg.hidden) for r in ratios)
        init_input_layers(self.embed, self.y_embed)
        nn.init.normal_(self.stage_embed.weight, std=0.02)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def check_stage_sizes(sizes: list[int], size: int, patch: int) -> None:
        """Raise ValueError unless the finest stage is the whole latent (``size``)."""
        if sizes[-1] != size:
            raise ValueError(
                f"the last stage grid ({sizes[-1] // patch}) must equal the full token grid "
                f"{size // patch} (latent {size} / patch {patch})"
            )

    @property
    def num_stages(self) -> int:
        return len(self.grids)

    def stage_tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, n_s, n_s) -> (B, g_s², C·p²)."""
        return patchify(latent, self.cfg.patch)

    def stage_latent(self, tokens: torch.Tensor, s: int) -> torch.Tensor:
        n = self.schedule.sizes[s]
        return unpatchify(tokens, self.cfg.patch, self.channels, n, n)

    def stage_ids(self, device) -> torch.Tensor:
        """Stage index of every sequence position (class token = -1) -> (1 + Σ g_s²,)."""
        ids = [torch.full((1,), -1)] + [torch.full((g * g,), s) for s, g in enumerate(self.grids)]
        return torch.cat(ids).to(device)

    def _ar_lengths(self, stages: int) -> list[int]:
        """AR positions whose outputs condition each of the first ``stages`` stages: its input's
        tokens (``upsampled``: g_s²), or its parents (``parent``: the class token for stage 1,
        then g_{s−1}²)."""
        if self.parent:
            return [g * g for g in [1, *self.grids[: stages - 1]]][:stages]
        return [g * g for g in self.grids[:stages]]

    def block_causal_mask(self, device, stages: int | None = None) -> torch.Tensor:
        """Bool (L, L) over the AR sequence of the first ``stages`` stages: position i may attend
        to j iff stage(j) <= stage(i) (the class token is stage −1, or stage 1's parent)."""
        lengths = self._ar_lengths(self.num_stages if stages is None else stages)
        parts = [torch.full((n,), s) for s, n in enumerate(lengths)]
        ids = torch.cat(parts if self.parent else [torch.full((1,), -1), *parts]).to(device)
        return ids[None, :] <= ids[:, None]

    def _embed_stage(self, inp: torch.Tensor, s: int) -> torch.Tensor:
        """Tokens of stage s's AR input (at grid g_s, or g_{s−1} for ``parent``) -> (B, n, hidden)."""
        h = self.embed(self.stage_tokens(inp))
        return h + getattr(self, f"pos{s - 1 if self.parent else s}") + self.stage_embed.weight[s]

    def ar_input(self, prev_end: torch.Tensor | None, s: int, like: torch.Tensor) -> torch.Tensor | None:
        """The AR transformer's input for stage s given the previous stage's end state
        (``model.ar_input``): ``upsampled``: up(prev_end) at stage s's size (zeros like
        ``like``, stage s's start state, for s = 0); ``parent``: prev_end itself (None for s = 0)."""
        if self.parent:
            return None if s == 0 else prev_end
        if s == 0:
            return torch.zeros_like(like)
        assert prev_end is not None, "stage s > 0 needs the previous stage's end state"
        return upsample(prev_end, self.schedule.sizes[s])

    def _children(self, h: torch.Tensor, s: int) -> torch.Tensor:
        """``parent``: outputs at stage s's parent tokens (B, g², hidden) -> the conditions of
        stage s's tokens (B, (g·r)², hidden), children in raster order of the finer grid."""
        r, b, n, d = self.ratios[s], *h.shape
        g = int(round(n ** 0.5))
        out = self.expand[s](h).reshape(b, g, g, r, r, d).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, g * r * g * r, d)

    # ------------------------------------------------------------------ AR transformer
    def condition(self, inputs: list[torch.Tensor | None], y: torch.Tensor) -> list[torch.Tensor]:
        """Full pass (training, or sampling without a cache) over the first len(inputs) stages.

        inputs[s]: stage s's AR input (:meth:`ar_input`); y: (B,) labels (null = num_classes).
        Returns z per stage: (B, g_s², hidden).
        """
        c = self.y_embed(y)
        embedded = [self._embed_stage(x, s) for s, x in enumerate(inputs) if x is not None]
        h = torch.cat([c[:, None]] + embedded, dim=1)
        mask = self.block_causal_mask(h.device, len(inputs))
        for blk in self.blocks:
            h = blk(h, c, mask=mask)
        h = self.norm(h)
        out, i = [], 0 if self.parent else 1
        for s, n in enumerate(self._ar_lengths(len(inputs))):
            out.append(self._children(h[:, i : i + n], s) if self.parent else h[:, i : i + n])
            i += n
        return out

    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def condition_step(
        self, inp: torch.Tensor | None, s: int, y: torch.Tensor, cache: list[KVCache]
    ) -> torch.Tensor:
        """One stage with a KV cache of the earlier ones -> z (B, g_s², hidden).

        Stage 0 also feeds the class token. Must be called for s = 0, 1, … in order.
        """
        c = self.y_embed(y)
        if self.parent and s == 0:
            h = c[:, None]
        else:
            assert inp is not None, "only stage 1 of model.ar_input=parent has no AR input"
            h = self._embed_stage(inp, s)
            if s == 0:
                h = torch.cat([c[:, None], h], dim=1)
        # stage 0 carries the class token, which sees only itself; later stages see every cached position
        mask = self.block_causal_mask(h.device, 1) if s == 0 else None
        for blk, kv in zip(self.blocks, cache):
            h = blk(h, c, mask=mask, cache=kv)
        h = self.norm(h)
        if self.parent:
            return self._children(h, s)
        return h[:, 1:] if s == 0 else h

    # ------------------------------------------------------------------ head
    def head_mask(self, stage_of_token: torch.Tensor) -> torch.Tensor:
        return stage_of_token[None, :] == stage_of_token[:, None]

    def head_condition(self, z: torch.Tensor) -> torch.Tensor:
        """Project AR outputs once per stage: (B, N, hidden) -> (B, N, head_width)."""
        return self.head.project(z)

    def velocity(self, x_tokens: torch.Tensor, u: torch.Tensor, zc: torch.Tensor, s: int) -> torch.Tensor:
        """Head velocity for stage s. x_tokens (B, g_s², D_tok), u scalar/(B,)/(B, N),
        zc = :meth:`head_condition` of the stage's AR outputs (B, g_s², head_width)."""
        pos = getattr(self, f"hpos{s}") if self.cfg.head == "transformer" else None
        out = self.head.across_borders(self.head(x_tokens, u, zc, pos=pos), [self.grids[s]])
        return self._as_velocity(out, x_tokens, u)

    def velocity_all(self, x_tokens: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Head over the tokens of all stages at once (training). u: (B, S), one time per
        stage of each image (or (B, N_total), one per token)."""
        zc = self.head.project(z)
        counts = [g * g for g in self.grids] if u.shape[1] == self.num_stages else None
        if counts is not None and self.cfg.prediction == "x":
            u, counts = u.repeat_interleave(torch.tensor(counts, device=u.device), dim=1), None
        if self.cfg.head == "mlp":
            out = self.head(x_tokens, u, zc, counts=counts)
        else:
            ids = self.stage_ids(x_tokens.device)[1:]
            pos = torch.cat([getattr(self, f"hpos{s}") for s in range(self.num_stages)], dim=1)
            out = self.head(x_tokens, u, zc, mask=self.head_mask(ids), pos=pos, counts=counts)
        return self._as_velocity(self.head.across_borders(out, self.grids), x_tokens, u)

    def _as_velocity(self, out: torch.Tensor, x_tokens: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Head output -> velocity (identity for ``prediction: v``)."""
        if self.cfg.prediction == "v":
            return out
        return x_to_velocity(out, x_tokens, u)
