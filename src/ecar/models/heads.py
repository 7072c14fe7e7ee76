"""Flow-matching heads shared by the autoregressive networks (E-CAR now, MAR later).

A head predicts the velocity of a unit's tokens from (x_u, u, z): the tokens' current state,
the flow time and the condition vectors the AR transformer produced for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, cast

import torch
from torch import nn

from ecar.errors import ConfigError, shown
from ecar.layers import AdaLNBlock, AdaLNResBlock, FinalLayer, TimestepEmbedder, patchify, unpatchify, zero_init
from ecar.models.base import ClassConditional, TransformerConfig

X_PRED_MIN_GAP = 0.05
"""x-prediction divides by 1 − u; clamped here so the loss weight stays bounded near u = 1."""

HEAD_KINDS = ("mlp", "transformer")


def x_to_velocity(x_hat: torch.Tensor, x_u: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Velocity of the straight path through x_u that ends at x̂: (x̂ − x_u) / (1 − u).

    x_hat, x_u: (B, ...); u: scalar, (B,) or (B, N) for token tensors (B, N, D).
    """
    u = torch.as_tensor(u, dtype=x_u.dtype, device=x_u.device)
    if u.dim() >= 1:
        u = u.reshape(*u.shape, *([1] * (x_u.dim() - u.dim())))
    return (x_hat - x_u) / (1 - u).clamp_min(X_PRED_MIN_GAP)


HEAD_CONDS = ("token", "stage", "add")
"""How a :class:`TokenHead` is conditioned on (u, z) — what one head call costs per token:

* ``token``: adaLN on c = proj(z) + emb(u) per token (MAR, arXiv 2406.11838 §3.3): every
  block's modulation is a (width × k·width) product per token, recomputed at every step.
* ``stage``: the modulation is split into a per-token part from proj(z), computed once per
  unit (:meth:`TokenHead.project`), plus a per-row part from emb(u) — adaLN's ``ada(c)``
  with the SiLU taken of each part alone. A step then pays only the blocks' bodies.
* ``add``: proj(z) is added to the tokens' hidden state (in-context conditioning) and the
  modulation comes from emb(u) alone, one per row: the cheapest; z reaches the blocks
  through the residual stream instead of through their norms.
"""


def _per_token(terms: torch.Tensor, b: int, repeats: torch.Tensor | None) -> torch.Tensor:
    """Per-row time terms -> (B, 1 or N, F): rows (B·G, F) of G time groups per image, group g
    covering ``repeats[g]`` consecutive tokens (None: one group per token, or one per image)."""
    terms = terms.reshape(b, -1, terms.shape[-1])
    return terms if repeats is None else terms.repeat_interleave(repeats, dim=1)


def _out_features(ada: nn.Sequential) -> int:
    """Width of an adaLN modulation (SiLU, Linear): its linear layer's outputs."""
    return cast(nn.Linear, ada[1]).out_features


class TokenHead(nn.Module):
    """Velocity of a unit's tokens. x: (B, N, D_tok), u: (B,) or (B, N), z: (B, N, cond_dim).

    ``kind="mlp"``: per-token residual MLP with adaLN (MAR, arXiv 2406.11838 §3.3);
    ``kind="transformer"``: adaLN transformer blocks over the unit's tokens (``heads``
    attention heads, MLP ``mlp_ratio``; an optional mask restricts attention, e.g. to one
    stage). ``cond``: how (u, z) reach the blocks (:data:`HEAD_CONDS`).
    """

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int, kind: str = "mlp",
                 heads: int = 4, mlp_ratio: float = 4.0, cond: str = "token",
                 grid_out: tuple[int, int, int] | None = None):
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind {kind!r}; choose one of {', '.join(HEAD_KINDS)}")
        if cond not in HEAD_CONDS:
            raise ValueError(f"head conditioning {cond!r}; choose one of {', '.join(HEAD_CONDS)}")
        self.kind, self.cond, self.width = kind, cond, width
        self.inp = nn.Linear(token_dim, width)
        self.t_embed = TimestepEmbedder(width)
        self.z_proj = nn.Linear(cond_dim, width)
        if kind == "mlp":
            self.blocks = nn.ModuleList(AdaLNResBlock(width) for _ in range(depth))
        else:
            self.blocks = nn.ModuleList(AdaLNBlock(width, heads, mlp_ratio) for _ in range(depth))
        # grid_out = (F, channels, patch): the last layer gives F features per latent pixel and
        # a 3×3 convolution over the token grid maps them to the output (:meth:`across_borders`)
        self.final = FinalLayer(width, grid_out[0] * grid_out[2] ** 2 if grid_out else token_dim)
        self.grid_out: nn.Conv2d | None = None
        self.grid_patch = grid_out[2] if grid_out else 0
        if grid_out:  # default weight init: the last layer starts at zero, so must this not
            self.grid_out = nn.Conv2d(grid_out[0], grid_out[1], 3, padding=1)
            nn.init.zeros_(cast(torch.Tensor, self.grid_out.bias))
        self.t_ada: nn.ModuleList | None = None
        if cond == "stage":  # the time part of each modulation (the z part is each block's own ada)
            self.t_ada = nn.ModuleList(
                nn.Sequential(nn.SiLU(), nn.Linear(width, _out_features(ada))) for ada in self._adas())
            for t_ada in self.t_ada:
                zero_init(cast(nn.Sequential, t_ada)[1])

    def _adas(self) -> list[nn.Sequential]:
        """The adaLN modulation (SiLU, Linear) of every block and of the final layer."""
        return [cast(nn.Sequential, m.ada) for m in [*self.blocks, self.final]]

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """AR output (B, N, cond_dim) -> head condition, constant over a unit's steps: proj(z)
        (B, N, width); with ``cond="stage"`` followed by every block's (and the final layer's)
        z-part modulation, packed along the last axis."""
        zc = self.z_proj(z)
        if self.cond != "stage":
            return zc
        return torch.cat([zc, *(ada(zc) for ada in self._adas())], dim=-1)

    def time_embedding(self, u: torch.Tensor) -> torch.Tensor:
        """Times u (R,) -> their embeddings (R, width). Outside autograd the embedding is computed
        once per distinct time and gathered (a chain's rows share its grid's few times);
        the same values up to rounding."""
        if torch.is_grad_enabled() or u.numel() < 64:  # few rows: not worth a sort
            return self.t_embed(u)
        times, index = torch.unique(u, return_inverse=True)
        return self.t_embed(times)[index] if times.numel() < u.numel() else self.t_embed(u)

    def terms(self, zc: torch.Tensor, t: torch.Tensor, expand=None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """The x-free part of a head call: conditions zc (…, P) from :meth:`project` and time
        embeddings t -> (what is added to the hidden state or None, the raw modulation of every
        block and of the final layer). ``expand`` maps a time-only term to a shape that
        broadcasts against zc (identity when t does already). With ``cond`` ``token`` the
        modulations mix z and t per row; with ``add`` they are t's alone (one per time)."""
        expand = expand or (lambda m: m)
        if self.cond == "token":
            c = zc + expand(t)
            return None, [ada(c) for ada in self._adas()]
        if self.cond == "stage":
            assert self.t_ada is not None
            parts = zc[..., self.width:].split([_out_features(a) for a in self._adas()], dim=-1)
            return None, [p + expand(ta(t)) for p, ta in zip(parts, self.t_ada)]
        return zc, [expand(ada(t)) for ada in self._adas()]

    def body(self, x: torch.Tensor, offset: torch.Tensor | None, mods: list, mask: torch.Tensor | None = None,
             pos: torch.Tensor | None = None, c: torch.Tensor | None = None) -> torch.Tensor:
        """The x-dependent part of a head call: tokens x (…, N, D) and :meth:`terms` -> (…, N, D).
        A modulation given as None is computed by its block from ``c`` (inside the block's own
        call, where a sharded block has its weights)."""
        h = self.inp(x)
        if offset is not None:
            h = h + offset
        if self.kind == "mlp":
            for blk, mod in zip(self.blocks, mods):
                h = blk(h, c, mod=mod)
        else:
            if pos is not None:
                h = h + pos
            for blk, mod in zip(self.blocks, mods):
                h = blk(h, c, mask=mask, mod=None if mod is None else cast(AdaLNBlock, blk).modulation(None, mod))
        return self.final(h, c, mod=mods[-1])

    def across_borders(self, out: torch.Tensor, grids: list[int]) -> torch.Tensor:
        """With ``grid_out``: :meth:`forward`'s features (B, Σ g², F·p²) of consecutive token
        grids of sides ``grids`` (the stages, coarse to fine) -> outputs (B, Σ g², C·p²), each
        grid through the 3×3 convolution over its own latent pixels, so a token's border pixels
        read the neighbouring tokens' features. Identity without ``grid_out``."""
        if self.grid_out is None:
            return out
        f, p = self.grid_out.in_channels, self.grid_patch
        parts = out.split([g * g for g in grids], dim=1)
        return torch.cat([patchify(self.grid_out(unpatchify(part, p, f, g * p, g * p)), p)
                          for part, g in zip(parts, grids)], dim=1)

    def forward(
        self, x: torch.Tensor, u: torch.Tensor, zc: torch.Tensor, mask: torch.Tensor | None = None,
        pos: torch.Tensor | None = None, counts: list[int] | None = None,
    ) -> torch.Tensor:
        """zc: the condition from :meth:`project`. u: scalar, (B,), (B, N), or with ``counts``
        (B, G): one time per group of ``counts[g]`` consecutive tokens (the stages in
        training), so the time terms are computed per group, not per token."""
        b = x.shape[0]
        if u.dim() == 0:
            u = u.expand(b)
        t = self.time_embedding(u.reshape(-1))  # (B·G, w)
        reps = None if counts is None else torch.tensor(counts, device=x.device)
        if self.cond == "token":  # each block modulates itself from c (FSDP gathers a block's weights in its call)
            return self.body(x, None, [None] * (len(self.blocks) + 1), mask, pos, zc + _per_token(t, b, reps))
        offset, mods = self.terms(zc, t, lambda m: _per_token(m, b, reps))  # time terms per row or group
        return self.body(x, offset, mods, mask, pos)

    def chain_means(self, zc: torch.Tensor, times: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    weights: torch.Tensor | None = None) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The transition means of a Gaussian chain on this head's velocity with its x-free
        terms (:meth:`terms`: time embedding and modulations) computed once for every step:
        zc (B, N, P) from :meth:`project`, the chain's times t_k and step coefficients a_k, b_k
        (K,) -> ``m(x (B, N, D), k) -> (B, N, D)``, the mean a_k·x + b_k·v(x, t_k) of step k.
        With ``weights`` w (B, N, 1), zc (2, B, N, P) holds a conditional and a null half and the
        mean is that of the guided velocity v_null + w·(v_cond − v_null). The same values as
        :meth:`forward` at t_k up to rounding; a step then runs only :meth:`body` (the
        interface of :meth:`MixtureHead.chain_means`)."""
        if self.kind != "mlp":
            raise ValueError("chain_means: a per-token chain needs the mlp head (kind='mlp')")
        lead = zc.dim() - 1
        t = self.time_embedding(times.to(zc.dtype)).reshape(len(times), *([1] * lead), -1)
        offset, mods = self.terms(zc, t)  # (K, …, F): per token and step (token, stage) or per step (add)
        per_step = [list(ms) for ms in zip(*(m.unbind(0) for m in mods))]
        coef_a, coef_b = a.tolist(), b.tolist()
        w = None if weights is None else weights.to(zc.dtype)

        def m(x: torch.Tensor, k: int) -> torch.Tensor:
            if w is None:
                v = self.body(x, offset, per_step[k])
            else:
                y = self.body(x.expand(2, *x.shape), offset, per_step[k])
                v = torch.lerp(y[1], y[0], w)
            return torch.add(x * coef_a[k], v, alpha=coef_b[k])

        return m


@dataclass
class TokenHeadConfig(TransformerConfig):
    """Transformer fields plus the per-token MLP head of MAR and AR."""

    head_width: int = 128
    """Width of the per-token MLP head (MAR: 1024 for B, 1280 for L)."""
    head_depth: int = 3
    """Residual adaLN blocks of the head (MAR: 3 by default, 6 for B, 8 for L)."""
    head_batch_mul: int = 1
    """Training only: draws of (t, ε) per trained token per transformer pass (MAR's diffusion
    batch multiplier, 4 in the paper)."""

    def validate(self) -> None:
        super().validate()
        if min(self.head_width, self.head_depth) < 1:
            raise ConfigError("model.head_width and model.head_depth must be >= 1")
        if not isinstance(self.head_batch_mul, int) or self.head_batch_mul < 1:
            raise ConfigError(f"model.head_batch_mul must be an integer >= 1, got {shown(self.head_batch_mul)}")


class TokenGridNetwork(ClassConditional):
    """Base of the per-token networks (MAR, AR): a C×size×size latent as a raster-order grid
    of N = (size / patch)² tokens of D = C·patch² values, labels with a null class, and a
    per-token head ``self.head`` (a :class:`TokenHead`) the subclass builds."""

    head: TokenHead | MixtureHead

    def _set_grid(self, cfg, channels: int, size: int, num_classes: int) -> None:
        if size % cfg.patch:
            raise ValueError(f"latent size {size} is not divisible by model.patch={cfg.patch}")
        self.cfg, self.channels, self.size, self.num_classes = cfg, channels, size, num_classes
        self.grid = size // cfg.patch
        self.num_tokens = self.grid**2
        self.token_dim = channels * cfg.patch**2

    def tokens(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, size, size) -> (B, N, D), raster order."""
        return patchify(latent, self.cfg.patch)

    def latent(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, C, size, size)."""
        return unpatchify(tokens, self.cfg.patch, self.channels, self.size, self.size)

    def head_condition(self, z: torch.Tensor) -> torch.Tensor:
        """(…, hidden) -> (…, head_width): projected once per token, constant over its steps."""
        return self.head.project(z)

    def velocity(self, x: torch.Tensor, u: torch.Tensor, zc: torch.Tensor) -> torch.Tensor:
        """Head velocity of tokens x (B, n, D) at time u (scalar, (B,) or (B, n)) given their
        projected conditions zc (B, n, head_width)."""
        return self.head(x, u, zc)


class MixtureHead(nn.Module):
    """A per-token head whose velocity needs no network call per step: an MLP maps the
    condition once per token to a diagonal Gaussian mixture over the token (``components``
    weights, means and scales), and the velocity is that mixture's exact flow velocity,

        v(x, t) = E[x1 − x0 | x_t = x] = Σ_i r_i(x, t)·[μ_i + (t·σ_i² − (1 − t)) / S_i ⊙ (x − t·μ_i)],

    with x1 ~ mixture, x0 ~ N(0, I), S_i = t²·σ_i² + (1 − t)² and r_i the posterior weight of
    component i given x_t (GIVT-like output, arXiv 2312.02116, in the flow's terms). Used as a
    cheap speculative draft head on the target's own transformer (docs/speculative.md): its
    Gaussian chain costs a few tensor operations per step. Same interface as
    :class:`TokenHead` (``project`` once per token, then ``forward(x, u, zc)``)."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, components: int):
        super().__init__()
        self.k, self.dim = components, token_dim
        self.mlp = nn.Sequential(nn.Linear(cond_dim, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, components * (1 + 2 * token_dim)))

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """(…, cond_dim) -> (…, k·(1 + 2·D)): the mixture's parameters, packed and raw (log weights
        up to a constant, means, half log variances before clamping; :meth:`_unpack` reads them)."""
        return self.mlp(z)

    def _unpack(self, zc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packed parameters -> log weights (…, k) up to a constant (the velocity's posterior
        weights normalise them), means and variances (…, k, D)."""
        k, d = self.k, self.dim
        var = torch.exp(2 * zc[..., k + k * d:].clamp(-7.0, 2.0))
        return zc[..., :k], zc[..., k:k + k * d].unflatten(-1, (k, d)), var.unflatten(-1, (k, d))

    @staticmethod
    def _terms(logw, mu, var, t):
        """The x-free parts of the velocity at time(s) t (broadcast against (…, k, D)): half the
        precision 1/(2·S), t·μ, the component bias log w − ½·Σ log S, and the affine map
        μ + c·(x − t·μ) = a + c·x of each component (a = μ − c·t·μ, c = (t·σ² − (1 − t)) / S)."""
        s = t * t * var + (1 - t) ** 2
        c = (t * var - (1 - t)) / s
        tmu = t * mu
        return 0.5 / s, tmu, logw - 0.5 * torch.log(s).sum(-1), mu - c * tmu, c

    @staticmethod
    def _velocity(x, half_prec, tmu, bias, a, c):
        diff = x[..., None, :] - tmu
        resp = torch.softmax(bias - (diff * diff * half_prec).sum(-1), dim=-1)
        return (resp[..., None] * torch.addcmul(a, c, x[..., None, :])).sum(-2)

    def forward(self, x: torch.Tensor, u: torch.Tensor, zc: torch.Tensor, mask=None, pos=None) -> torch.Tensor:
        """x (B, N, D), u scalar, (B,) or (B, N), zc from :meth:`project` (B, N, …) -> (B, N, D)."""
        u = torch.as_tensor(u, dtype=x.dtype, device=x.device)
        if u.dim() == 1:
            u = u[:, None]
        t = u[..., None, None] if u.dim() else u  # against (B, N, k, D)
        return self._velocity(x, *self._terms(*self._unpack(zc), t))

    def chain_means(self, zc: torch.Tensor, times: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    weights: torch.Tensor | None = None) -> Callable[[torch.Tensor, int], torch.Tensor]:
        """The transition means of a Gaussian chain on this head's velocity, its x-free parts
        computed once for every step: zc (B, N, P) from :meth:`project`, the chain's times t_k
        and step coefficients a_k, b_k (K,) -> ``m(x (B, N, D), k) -> (B, N, D)``, the mean
        a_k·x + b_k·v(x, t_k) of step k (:meth:`~ecar.samplers.chain.GaussianChain.coefficients`).
        With ``weights`` w (B, N, 1), zc (2, B, N, P) holds a conditional and a null half and
        the mean is that of the guided velocity v_null + w·(v_cond − v_null).

        Same values as :meth:`forward` up to rounding, in 7 tensor operations a step: with
        posterior weights r_i, the mean is Σ_i r_i·(b_k·a_i + (b_k·c_i + a_k)·x) (Σ_i r_i = 1),
        so one matrix product of r with the stacked per-component maps gives it, and the
        logits log w_i − ½·Σ log S_i − Σ (x − t·μ_i)²/(2·S_i) are one matrix product of the
        features (x², x, 1) with precomputed coefficients. The guided mix is linear too, so
        it is applied once to those products."""
        logw, mu, var = self._unpack(zc)
        shape = (-1, *([1] * (mu.dim())))  # (K, 1, …) against (K, …, k, D)
        t, a, b = (v.to(zc.dtype).reshape(shape) for v in (times, a, b))
        s = torch.addcmul((1 - t) ** 2, t * t, var)
        c = torch.addcmul(t - 1, t, var) / s
        tmu = t * mu
        lin = tmu / s  # 2·(t·μ)/(2·S): the logit's linear coefficient
        bias = torch.add(logw, torch.addcmul(torch.log(s), tmu, lin).sum(-1), alpha=-0.5)
        logit_map = torch.cat([-0.5 / s, lin, bias[..., None]], dim=-1).transpose(-1, -2)  # (K, …, 2D + 1, k)
        mean_map = torch.cat([b * torch.addcmul(mu, c, tmu, value=-1), torch.addcmul(a, b, c)], dim=-1)
        rows = mu.shape[:-2].numel()  # (halves ×) B × N: one small matrix pair per row and step
        logit_maps = logit_map.reshape(len(t), rows, *logit_map.shape[-2:]).unbind(0)  # lists: no indexing per step
        mean_maps = mean_map.reshape(len(t), rows, *mean_map.shape[-2:]).unbind(0)
        d, ones, lead = self.dim, None, mu.shape[:-4]  # lead: () or (2,), the halves
        w = None if weights is None else weights.to(zc.dtype)

        def m(x: torch.Tensor, k: int) -> torch.Tensor:
            nonlocal ones
            if ones is None or ones.shape[:-1] != x.shape[:-1]:
                ones = x.new_ones((*x.shape[:-1], 1))
            feats = torch.cat([x * x, x, ones], dim=-1).reshape(-1, 1, 2 * d + 1)  # (B·N, 1, 2D + 1)
            if w is not None:
                feats = torch.cat([feats, feats])
            y = torch.bmm(torch.softmax(torch.bmm(feats, logit_maps[k]), dim=-1), mean_maps[k])
            y = y.view(*lead, *x.shape[:-1], 2 * d)
            if w is not None:
                y = torch.lerp(y[1], y[0], w)
            return torch.addcmul(y[..., :d], y[..., d:], x)

        return m
