"""Exact continuous speculative decoding for the causal per-token model (docs/speculative.md).

A small *draft* network proposes γ tokens per image, one after the other, each sampled by the
head's Gaussian chain (:mod:`ecar.samplers.chain`) with its visited path and transition
means recorded. The *target* then verifies all γ at once: one causal pass over the γ
positions (inputs: the last known token and the first γ − 1 proposals) with its KV cache, and
one batched head call for the target's means at every step of every proposed path (γ·K rows
per image). The draft's path is accepted with probability min(1, p(path)/q(path)) in log
space (the exact path densities; the start term cancels); the first rejected position is
replaced by a sample of the normalised residual max(0, p − q) and the later proposals are
discarded. Both KV caches are ragged (:class:`~ecar.layers.ragged_cache.RaggedKVCache`),
so rolling them back is free, and every image of a batch advances by its own count.

Residual sampling is exact rejection from p: draw paths y ~ p (the target's chain), accept
with probability 1 − q(y)/p(y) (0 where q ≥ p). ``residual_batch`` candidates per rejected
token run as one batch and the first accepted one in their order is taken (the first
success of an i.i.d. sequence); rows without one draw another batch. There is no fallback
value: after ``max_residual_rounds`` batches without success the call raises.

Exactness for tokens follows from exactness for paths: the token is the path's last state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ecar.engine.causal import CausalSampleConfig, GuidedCausal
from ecar.samplers.chain import GaussianChain, path_log_ratio

__all__ = ["ACCEPTED", "RESIDUAL", "SpeculativeStats", "accepted_prefix", "first_residual", "generate_speculative"]

ACCEPTED, RESIDUAL = 1, 2
"""Codes of ``source``: where each output token came from (0 would be "never set")."""


def accepted_prefix(log_ratio: torch.Tensor, limit: torch.Tensor, generator: torch.Generator | None = None
                    ) -> torch.Tensor:
    """Acceptance of γ proposals per row: log_ratio (B, γ) = log p − log q of each proposal,
    limit (B,) the valid proposals per row (a prefix) -> (B,) long, the accepted count a:
    proposal j is accepted when log u_j < log_ratio_j (u_j ~ U(0, 1), i.e. with probability
    min(1, p/q)), and a is the number before the first rejection (at most ``limit``)."""
    u = torch.rand(log_ratio.shape, generator=generator, device=log_ratio.device, dtype=torch.float64)
    valid = torch.arange(log_ratio.shape[1], device=log_ratio.device)[None] < limit[:, None]
    ok = (torch.log(u) < log_ratio.double()) & valid
    return ok.long().cumprod(dim=1).sum(dim=1)


def first_residual(log_ratio: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Rejection step of residual sampling: log_ratio (R, M) = log p − log q of M candidates
    y ~ p per row -> (R,) long, the index of the first candidate accepted with probability
    max(0, 1 − q/p), or −1 where none was. The accepted candidates are distributed as
    max(0, p − q) / TV(p, q)."""
    lr = log_ratio.double()
    u = torch.rand(lr.shape, generator=generator, device=lr.device, dtype=torch.float64)
    threshold = torch.where(lr > 0, torch.log(-torch.expm1(-lr.clamp_min(1e-300))), torch.full_like(lr, -torch.inf))
    ok = torch.log(u) < threshold
    first = torch.where(ok.any(dim=1), ok.long().argmax(dim=1), torch.full_like(ok[:, 0], -1, dtype=torch.long))
    return first


@dataclass
class SpeculativeStats:
    """Counts of one or more speculative runs (summed with :meth:`add`)."""

    tokens: int = 0
    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    image_passes: int = 0
    target_head_calls: int = 0
    draft_passes: int = 0
    draft_head_calls: int = 0
    residual_tokens: int = 0
    residual_candidates: int = 0
    residual_rounds: int = 0
    seconds: float = 0.0

    def add(self, other: "SpeculativeStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        """The counts plus ``acceptance_rate`` (accepted / proposed) and
        ``tokens_per_target_pass`` (tokens per image and target transformer pass: tokens /
        Σ passes × images of the batch)."""
        out = asdict(self)
        out["acceptance_rate"] = self.accepted / self.proposed if self.proposed else float("nan")
        out["tokens_per_target_pass"] = self.tokens / self.image_passes if self.image_passes else float("nan")
        return out


def _pick(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, doubled: bool) -> torch.Tensor:
    """z (B or 2B, γ, F) -> (R or 2R, F): entry (rows[r], cols[r]) of each half."""
    if not doubled:
        return z[rows, cols]
    c, u = z.chunk(2)
    return torch.cat([c[rows, cols], u[rows, cols]])


def _expand(z: torch.Tensor, m: int) -> torch.Tensor:
    """(R, F) -> (R, m, F)."""
    return z[:, None].expand(-1, m, -1)


def _chain_means(net: GuidedCausal, zq: torch.Tensor, pos: torch.Tensor, chain: GaussianChain,
                 states: torch.Tensor) -> torch.Tensor:
    """Means of ``net``'s chain at states (B, M, K, D) for conditions zq (B or 2B, M, F) at
    positions pos (B, M): one head call of M·K rows per image."""
    k = chain.steps
    rows = zq[:, :, None].expand(-1, -1, k, -1).reshape(zq.shape[0], -1, zq.shape[-1])
    return chain.means(net.velocity(rows, pos[:, :, None].expand(-1, -1, k).reshape(pos.shape[0], -1)), states)


@torch.no_grad()
def generate_speculative(target: nn.Module, draft: nn.Module, labels: torch.Tensor, settings: CausalSampleConfig,
                         gamma: int, residual_batch: int = 8, generator: torch.Generator | None = None,
                         max_residual_rounds: int = 100_000,
                         on_round: Callable[[torch.Tensor], None] | None = None) -> dict:
    """labels (B,) -> {"latents": (B, C, H, W), "stats": SpeculativeStats, "source": (B, N)
    int8 (:data:`ACCEPTED` or :data:`RESIDUAL` per token)}: samples of ``target``'s guided,
    tempered chain (``settings``, sampler euler_maruyama), proposed by ``draft`` (same token
    layout and settings). ``on_round(n)`` hears the tokens known per image after each round."""
    if settings.sampler != "euler_maruyama":
        raise ValueError(f"speculative decoding compares path densities, so the head must be sampled by "
                         f"the Gaussian chain: use sampler euler_maruyama (got {settings.sampler!r})")
    if gamma < 1 or residual_batch < 1:
        raise ValueError(f"gamma and residual_batch must be >= 1, got {gamma}, {residual_batch}")
    if (target.num_tokens, target.token_dim) != (draft.num_tokens, draft.token_dim):
        raise ValueError(f"draft tokens {draft.num_tokens}×{draft.token_dim} differ from the target's "
                         f"{target.num_tokens}×{target.token_dim}")
    chain = settings.chain()
    B, N, D, dev = labels.shape[0], target.num_tokens, target.token_dim, labels.device
    K, M, stds = chain.steps, residual_batch, chain.stds(dev)
    tnet = GuidedCausal(target, labels, settings.guidance, N + gamma)
    dnet = GuidedCausal(draft, labels, settings.guidance, N + gamma)
    dbl = tnet.doubled
    tokens = torch.zeros(B, N + gamma, D, device=dev)
    source = torch.zeros(B, N + gamma, dtype=torch.int8, device=dev)
    n = torch.zeros(B, dtype=torch.long, device=dev)
    steps = torch.arange(gamma, device=dev)
    stats = SpeculativeStats()
    batch = torch.arange(B, device=dev)
    while bool((n < N).any()):
        limit = (N - n).clamp(0, gamma)
        pos = n[:, None] + steps
        prev0 = tokens[batch, (n - 1).clamp_min(0)][:, None]
        # the draft proposes gamma tokens, recording each path and its transition means
        prev, props, paths, q_means, zq = prev0, [], [], [], []
        for j in range(gamma):
            z = dnet.condition(prev, pos[:, j:j + 1])
            noise = torch.randn((B, 1, D), generator=generator, device=dev)
            x, path, mq = chain.sample(dnet.velocity(z, pos[:, j:j + 1]), noise, generator, record=True)
            props.append(x), paths.append(path), q_means.append(mq), zq.append(z)
            prev = x
        props, paths, q_means, zq = (torch.cat(v, dim=1) for v in (props, paths, q_means, zq))
        # the target verifies all of them: one causal pass, one head call of gamma*K rows per image
        zp = tnet.condition(torch.cat([prev0, props[:, :-1]], dim=1), pos)
        p_means = _chain_means(tnet, zp, pos, chain, paths[:, :, :-1])
        a = accepted_prefix(path_log_ratio(paths, p_means, q_means, stds), limit, generator)
        tokens.scatter_(1, pos[..., None].expand(-1, -1, D), props.to(tokens.dtype))
        source.scatter_(1, pos, torch.where(steps[None] < a[:, None], ACCEPTED, 0).to(torch.int8))
        rejected = a < limit
        stats.proposed += int(limit.sum())
        stats.accepted += int(a.sum())
        rows = rejected.nonzero()[:, 0]
        if rows.numel():
            cols = a[rows]
            res_zp, res_zq = _pick(zp, rows, cols, dbl), _pick(zq, rows, cols, dbl)
            res_pos = (n + a)[rows]
            rounds = 0
            while rows.numel():
                if rounds >= max_residual_rounds:
                    raise RuntimeError(
                        f"residual sampling found no sample in {rounds}×{M} candidates for {rows.numel()} "
                        "token(s): the draft and target densities agree almost everywhere there; raise "
                        "residual_batch or use a draft that differs less erratically from the target")
                rounds += 1
                r = rows.numel()
                prow = _expand(res_pos[:, None], M)[..., 0]
                noise = torch.randn((r, M, D), generator=generator, device=dev)
                y, ypath, ym = chain.sample(tnet.velocity(_expand(res_zp, M), prow), noise, generator, record=True)
                qm = _chain_means(dnet, _expand(res_zq, M), prow, chain, ypath[:, :, :-1])
                first = first_residual(path_log_ratio(ypath, ym, qm, stds), generator)
                ok = first >= 0
                stats.residual_candidates += r * M
                if ok.any():
                    tokens[rows[ok], res_pos[ok]] = y[ok.nonzero()[:, 0], first[ok]].to(tokens.dtype)
                    source[rows[ok], res_pos[ok]] = RESIDUAL
                    stats.residual_tokens += int(ok.sum())
                keep = ~ok
                rows, res_pos = rows[keep], res_pos[keep]
                res_zp = torch.cat([h[keep] for h in res_zp.chunk(2)]) if dbl else res_zp[keep]
                res_zq = torch.cat([h[keep] for h in res_zq.chunk(2)]) if dbl else res_zq[keep]
            stats.residual_rounds += rounds
        n = n + a + rejected.long()
        if on_round is not None:
            on_round(n.clone())
    stats.tokens = B * N
    stats.target_passes, stats.target_head_calls = tnet.passes, tnet.head_calls
    stats.image_passes = B * tnet.passes
    stats.draft_passes, stats.draft_head_calls = dnet.passes, dnet.head_calls
    return {"latents": target.latent(tokens[:, :N].contiguous()), "stats": stats, "source": source[:, :N]}
