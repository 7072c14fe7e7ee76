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

With ``verify="step"`` the γ·K Gaussian transitions are tested instead, jointly as one block
(:func:`block_accepted`, block verification: exact, and never keeps fewer transitions than
testing each alone); the transition after the kept ones is drawn from the weighted residual
of two equal-covariance Gaussians (:func:`gaussian_residual`, no network call), and the rest
of that token's chain is speculated again (:func:`_continue_chains`: the draft proposes the
remaining transitions from the new state, the target tests them in one head call) until it
reaches its end.

With γ = 1 every image gains exactly one token per round, so the loop runs position by
position for the whole batch (:func:`_generate_token_by_token`): the speculation is then
over the K steps of each token's chain, checked in one head call instead of K sequential
ones — on a CPU, where larger γ mainly adds passes and chains after a rejection, the
fastest setting (docs/speculative.md).

Exactness for tokens follows from exactness for paths: the token is the path's last state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from ecar.engine.causal import CausalSampleConfig, GuidedCausal
from ecar.models.ar import shares_transformer
from ecar.samplers.chain import GaussianChain, path_log_ratio, step_log_ratio

__all__ = ["ACCEPTED", "RESIDUAL", "VERIFY_MODES", "SpeculativeStats", "accepted_prefix", "block_accepted",
           "chain_means", "first_residual", "gaussian_residual", "generate_speculative"]

VERIFY_MODES = ("step", "path")
"""What a proposal's acceptance test compares: each Gaussian transition of its chain (``step``)
or its whole path (``path``); both exact (docs/speculative.md)."""

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


def block_accepted(log_ratio: torch.Tensor, delta: torch.Tensor, limit: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Block verification (Sun et al., ICLR 2025, arXiv 2403.10444) of L proposed Gaussian
    transitions per row, in order: log_ratio (B, L) = log p − log q of each transition at its
    proposed state, delta (B, L) = |m_p − m_q| / std of its two means, limit (B,) the valid
    transitions (a prefix; 0 keeps none) -> (τ (B,) long, the transitions kept, and log w (B,) float64, the
    weight of the residual max(0, w·p − q) that transition τ + 1 is drawn from when τ < limit).

    With p_0 = 1 and p_i = min(1, p_{i−1}·p/q of transition i) (log p_i = S_i − max_{j<=i} S_j
    for the partial sums S of the log ratios), the mass r_i = ∫ max(0, p_i·p − q) of
    transition i + 1 (closed form for two Gaussians of equal std) and h_i = r_i / (r_i + 1 − p_i)
    (h = p at the last valid transition), τ is the last i with u_i < h_i (0 if none) and
    w = p_τ. The kept transitions and the residual draw follow the target exactly; every
    transition is kept at least as often as by testing each alone (docs/speculative.md)."""
    lr = log_ratio.double()
    b, n = lr.shape
    if n == 0:  # nothing proposed: nothing kept, an unweighted residual
        return torch.zeros(b, dtype=torch.long, device=lr.device), lr.new_zeros(b)
    sums = lr.cumsum(1)
    logp = sums - sums.cummax(1).values.clamp_min(0)  # (B, L): log p_1 … log p_L, all <= 0 (S_0 = 0)
    u = torch.rand((b, n), generator=generator, device=lr.device, dtype=torch.float64)
    last = (limit - 1).clamp_min(0)[:, None]
    whole = (u.gather(1, last) < logp.gather(1, last).exp())[:, 0] & (limit > 0)  # u_L < h_L = p_L
    tau = torch.where(whole, limit, 0)
    if bool(whole.all()):  # the usual case: the whole block kept, no h_i needed
        return tau, lr.new_zeros(b)
    lp, d = logp[:, :-1], delta[:, 1:].double()  # p_i and the distance of transition i + 1, i < L
    ystar = (0.5 * d * d - lp) / d  # where w·N(δ, 1) > N(0, 1) along the means' direction
    r = (torch.exp(lp) * torch.special.ndtr(d - ystar) - torch.special.ndtr(-ystar)).clamp_min(0)
    h = torch.where(lp == 0, 1.0, r / (r - torch.expm1(lp)))  # p_i = 1: h = 1
    i = torch.arange(1, n, device=lr.device)[None]
    cut = ((u[:, :-1] < h) & (i < limit[:, None])) * i  # the i < L (and < limit) with u_i < h_i
    tau = torch.where(whole, tau, cut.amax(1) if n > 1 else 0)
    return tau, torch.where(tau > 0, logp.gather(1, (tau - 1).clamp_min(0)[:, None])[:, 0], 0.0)


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
    tested: int = 0
    accepted: int = 0
    steps_proposed: int = 0
    steps_accepted: int = 0
    target_passes: int = 0
    image_passes: int = 0
    target_head_calls: int = 0
    draft_passes: int = 0
    draft_head_calls: int = 0
    residual_tokens: int = 0
    residual_candidates: int = 0
    residual_rounds: int = 0
    rounds: int = 0
    image_rounds: int = 0
    seconds: float = 0.0

    def add(self, other: "SpeculativeStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        """The counts plus ``acceptance_rate`` (accepted / tested: the probability that a
        proposal the target tests is accepted; the proposals after a rejection are never
        tested), ``accepted_per_proposed`` (accepted / proposed) and
        ``tokens_per_target_pass`` (tokens per image and target transformer pass: tokens /
        Σ passes × images of the batch) and ``tokens_per_round`` (tokens per image and
        verification: what one target head call over the proposals yields)."""
        out = asdict(self)
        out["acceptance_rate"] = self.accepted / self.tested if self.tested else float("nan")
        out["accepted_per_proposed"] = self.accepted / self.proposed if self.proposed else float("nan")
        out["tokens_per_target_pass"] = self.tokens / self.image_passes if self.image_passes else float("nan")
        out["tokens_per_round"] = self.tokens / self.image_rounds if self.image_rounds else float("nan")
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


def _rows(zq: torch.Tensor, pos: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditions zq (B or 2B, M, F) and positions pos (B, M), each repeated for j rows per token."""
    return (zq[:, :, None].expand(-1, -1, j, -1).reshape(zq.shape[0], -1, zq.shape[-1]),
            pos[:, :, None].expand(-1, -1, j).reshape(pos.shape[0], -1))


def chain_means(net: GuidedCausal, zq: torch.Tensor, pos: torch.Tensor, chain: GaussianChain,
                 states: torch.Tensor) -> torch.Tensor:
    """Means of ``net``'s chain at states (B, M, K, D) for conditions zq (B or 2B, M, F) at
    positions pos (B, M): one head call of M·K rows per image."""
    return chain.means(net.velocity(*_rows(zq, pos, chain.steps)), states)


def _step_test(path: torch.Tensor, p_means: torch.Tensor, q_means: torch.Tensor, stds: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`block_accepted` reads of recorded transitions (…, K + 1, D) and their two means
    (…, K, D): the log ratio (…, K) of each and the distance of its means in stds (…, K)."""
    return step_log_ratio(path, p_means, q_means, stds), (p_means - q_means).norm(dim=-1) / stds


def _verify(net: GuidedCausal, zp: torch.Tensor, pos: torch.Tensor, chain: GaussianChain,
            paths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's transition means (B, M, K, D) along recorded paths (B, M, K + 1, D) and the
    tokens it finishes them to (B, M, D): one head call of M·K rows per image (M·(K + 1) when
    the chain stops before t = 1)."""
    return chain.means_and_finish(net.velocity(*_rows(zp, pos, paths.shape[2] - (not chain.finishes))), paths)


def _finish(net: GuidedCausal, chain: GaussianChain, x: torch.Tensor, z: torch.Tensor, pos: torch.Tensor
            ) -> torch.Tensor:
    """Chain states x (R, D) at t = ``end`` of rows with conditions z (R or 2R, F) at positions pos
    (R,) -> the tokens ``net`` finishes them to (one head call; x itself when the chain ends at 1)."""
    if not chain.finishes:
        return x
    return chain.finish(net.velocity(z[:, None], pos[:, None]), x[:, None])[:, 0]


def gaussian_residual(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor, candidates: int,
                      generator: torch.Generator | None, max_rounds: int, stats: SpeculativeStats,
                      log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of the normalised residual max(0, w·N(m_p, s²I) − N(m_q, s²I)) (w = 1
    unless ``log_weight`` (R,) gives log w <= 0, :func:`block_accepted`): rejection from
    N(m_p, s²I) with acceptance 1 − q/(w·p) (:func:`first_residual`), ``candidates`` per row and
    round, until every row has one. mean_p, mean_q (R, D), std (R,) -> (R, D). No network call."""
    out = torch.empty_like(mean_p)
    rows = torch.arange(mean_p.shape[0], device=mean_p.device)
    rounds = 0
    while rows.numel():
        _check_rounds(rounds, max_rounds, rows.numel(), candidates)
        rounds += 1
        mp, mq, sd = mean_p[rows, None], mean_q[rows, None], std[rows, None, None]
        shift = 0.0 if log_weight is None else log_weight[rows, None].double()
        y = mp + sd * torch.randn((rows.numel(), candidates, mp.shape[-1]), generator=generator,
                                  device=mp.device, dtype=mp.dtype)
        lr = (((y - mq).double() ** 2 - (y - mp).double() ** 2) / (2 * sd.double() ** 2)).sum(-1) + shift
        first = first_residual(lr, generator)
        ok = first >= 0
        out[rows[ok]] = y[ok.nonzero()[:, 0], first[ok]]
        rows = rows[~ok]
        stats.residual_candidates += int(ok.numel()) * candidates
    stats.residual_rounds += rounds
    return out


def _check_rounds(rounds: int, max_rounds: int, rows: int, candidates: int) -> None:
    if rounds >= max_rounds:
        raise RuntimeError(
            f"residual sampling found no sample in {rounds}×{candidates} candidates for {rows} token(s): the "
            "draft and target densities agree almost everywhere there; raise residual_batch or use a draft "
            "that differs less erratically from the target")


def _residual_paths(tnet: GuidedCausal, dnet: GuidedCausal, chain: GaussianChain, zp: torch.Tensor,
                    zq: torch.Tensor, pos: torch.Tensor, m: int, generator, max_rounds: int,
                    stats: SpeculativeStats) -> torch.Tensor:
    """Path residual for R rejected tokens: conditions zp, zq (R or 2R, F), positions (R,) ->
    tokens (R, D): rejection from the target's chain with acceptance 1 − q(path)/p(path),
    ``m`` candidate chains per row and round (K target head calls a round)."""
    stds, dbl = chain.stds(pos.device), tnet.doubled
    out = torch.empty(pos.shape[0], tnet.model.token_dim, device=pos.device)
    rows = torch.arange(pos.shape[0], device=pos.device)
    rounds = 0
    while rows.numel():
        _check_rounds(rounds, max_rounds, rows.numel(), m)
        rounds += 1
        prow = pos[rows, None].expand(-1, m)
        noise = torch.randn((rows.numel(), m, out.shape[-1]), generator=generator, device=pos.device)
        y, ypath, ym = chain.sample(tnet.velocity(_expand(zp, m), prow), noise, generator, record=True)
        qm = chain_means(dnet, _expand(zq, m), prow, chain, ypath[:, :, :-1])
        first = first_residual(path_log_ratio(ypath, ym, qm, stds), generator)
        ok = first >= 0
        stats.residual_candidates += int(ok.numel()) * m
        out[rows[ok]] = y[ok.nonzero()[:, 0], first[ok]].to(out.dtype)
        rows, zp, zq = rows[~ok], GuidedCausal.rows(zp, ~ok, dbl), GuidedCausal.rows(zq, ~ok, dbl)
    stats.residual_rounds += rounds
    return out


def _continue_chains(tnet: GuidedCausal, dnet: GuidedCausal, chain: GaussianChain, x: torch.Tensor,
                     done: torch.Tensor, zp: torch.Tensor, zq: torch.Tensor, pos: torch.Tensor, candidates: int,
                     generator, max_rounds: int, stats: SpeculativeStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Chains known up to state x_done (x (R, D), done (R,) in 1 … K) after a residual draw, run
    on to x_K by speculation again: the draft proposes each row's remaining transitions from
    its own state, the target tests them in order in one head call (which also finishes the
    token), and a rejected transition is drawn from the Gaussian residual, after which the
    rest is proposed anew. Rows advance together from the earliest one; a row's transitions
    before its own ``done`` are held (its state copied) and count as accepted. Conditions
    zp, zq (R or 2R, F), positions (R,). Returns (x_K (R, D), finished tokens (R, D))."""
    K, dev, dbl = chain.steps, x.device, tnet.doubled
    stds = chain.stds(dev)
    state, token, done = x.clone(), torch.empty_like(x), done.clone()
    rows = torch.arange(x.shape[0], device=dev)
    while rows.numel():
        s0, d = int(done[rows].min()), done[rows]
        rp, rq = (GuidedCausal.rows(z, rows, dbl)[:, None] for z in (zp, zq))
        p = pos[rows, None]
        cur, states, q_means = state[rows, None], [state[rows, None]], []
        m = dnet.step_means(rq, p, chain)
        for k in range(s0, K):
            mean = m(cur, k)
            eps = torch.randn(cur.shape, generator=generator, device=dev, dtype=cur.dtype)
            cur = torch.where((d <= k)[:, None, None], mean + stds[k] * eps, cur)
            states.append(cur), q_means.append(mean)
        path = torch.stack(states, dim=2)  # (r, 1, K + 1 − s0, D)
        q_means = torch.stack(q_means, dim=2) if q_means else path[:, :, :0]
        p_means, finished = chain.means_and_finish(tnet.velocity(rp, p), path, s0)
        held = torch.arange(s0, K, device=dev)[None] < d[:, None]  # a copied state: ratio 1, kept
        lr, dist = _step_test(path, p_means, q_means, stds[s0:])
        c, logw = block_accepted(lr[:, 0].masked_fill(held, 0.0), dist[:, 0], torch.full_like(d, K - s0), generator)
        complete = c == K - s0
        state[rows[complete]] = path[complete, 0, -1]
        token[rows[complete]] = finished[complete, 0]
        rej = (~complete).nonzero()[:, 0]
        if rej.numel():
            j = c[rej]
            state[rows[rej]] = gaussian_residual(p_means[rej, 0, j], q_means[rej, 0, j], stds[s0 + j], candidates,
                                                 generator, max_rounds, stats, logw[rej])
            done[rows[rej]] = s0 + j + 1
        rows = rows[rej]
    return state, token


def _replace(tnet: GuidedCausal, dnet: GuidedCausal, chain: GaussianChain, verify: str, zp: torch.Tensor,
             zq: torch.Tensor, pos: torch.Tensor, p_means: torch.Tensor, q_means: torch.Tensor,
             step: tuple[torch.Tensor, torch.Tensor] | None, residual_batch: int, generator, max_rounds: int,
             stats: SpeculativeStats) -> tuple[torch.Tensor, torch.Tensor]:
    """New draws for R rejected proposals with target and draft conditions zp, zq (R or 2R, F) at
    positions pos (R,): the chain state (R, D) at its end and the token (R, D) the target
    finishes it to. ``step`` (verify ``step``): the transition k (R,) to redraw and the log
    weight (R,) of its residual (:func:`block_accepted`); it is drawn from the weighted Gaussian
    residual of the two means (R, K, D) there, then the rest of the chain is speculated again
    (:func:`_continue_chains`). ``path``: the path residual."""
    stats.residual_tokens += pos.shape[0]
    if verify == "step":
        k, log_weight = step
        r, m = torch.arange(k.shape[0], device=k.device), max(residual_batch, 64)
        x = gaussian_residual(p_means[r, k], q_means[r, k], chain.stds(k.device)[k], m, generator, max_rounds, stats,
                              log_weight)
        return _continue_chains(tnet, dnet, chain, x, k + 1, zp, zq, pos, m, generator, max_rounds, stats)
    new = _residual_paths(tnet, dnet, chain, zp, zq, pos, residual_batch, generator, max_rounds, stats)
    return new, _finish(tnet, chain, new, zp, pos)


def _generate_token_by_token(target: nn.Module, draft: nn.Module, tnet: GuidedCausal, dnet: GuidedCausal,
                             shared: bool, chain: GaussianChain, verify: str, residual_batch: int, generator,
                             max_rounds: int, on_round, stats: SpeculativeStats) -> dict:
    """γ = 1: every image gains exactly one token per round, so all stand at the same position
    and the round needs none of the ragged bookkeeping. The draft speculates the K steps of
    each token's chain; the target checks them in one head call (K + 1 rows with its finishing
    step) instead of running them one after the other."""
    B, N, D, dev = tnet.batch, target.num_tokens, target.token_dim, tnet.labels.device
    K, stds, dbl = chain.steps, chain.stds(dev), tnet.doubled
    tokens = torch.zeros(B, N, D, device=dev)
    context = torch.zeros(B, N, D, device=dev) if chain.finishes else tokens
    source = torch.full((B, N), ACCEPTED, dtype=torch.int8, device=dev)
    all_steps, one, zero = (torch.full((B,), v, dtype=torch.long, device=dev) for v in (K, 1, 0))
    steps_accepted = 0  # a tensor after the first token: summed without a sync per token
    for i in range(N):
        pos = torch.full((B, 1), i, dtype=torch.long, device=dev)
        prev = context[:, i - 1:i] if i else context[:, :1]
        if shared:
            h = tnet.hidden(prev, pos)
            zq, zp = draft.head_condition(h), target.head_condition(h)
        else:
            zq, zp = dnet.condition(prev, pos), tnet.condition(prev, pos)
        noise = torch.randn((B, 1, D), generator=generator, device=dev)
        x, path, q_means = chain.sample_steps(dnet.step_means(zq, pos, chain), noise, generator, record=True)
        p_means, finished = _verify(tnet, zp, pos, chain, path)
        if verify == "step":
            lr, dist = _step_test(path, p_means, q_means, stds)
            c, logw = block_accepted(lr[:, 0], dist[:, 0], all_steps, generator)
            ok, step = c == K, (c.clamp(max=K - 1), logw)
            steps_accepted = steps_accepted + c.sum()
        else:
            ok, step = accepted_prefix(path_log_ratio(path, p_means, q_means, stds), one, generator) == 1, None
        context[:, i], tokens[:, i] = x[:, 0].to(context.dtype), finished[:, 0].to(tokens.dtype)
        rows = (~ok).nonzero()[:, 0] if not bool(ok.all()) else zero[:0]
        if rows.numel():
            cols = zero[:rows.numel()]
            new, tok = _replace(tnet, dnet, chain, verify, _pick(zp, rows, cols, dbl), _pick(zq, rows, cols, dbl),
                                pos[rows, 0], p_means[rows, 0], q_means[rows, 0],
                                None if step is None else (step[0][rows], step[1][rows]), residual_batch, generator,
                                max_rounds, stats)
            if chain.finishes:
                context[rows, i] = new.to(context.dtype)
            tokens[rows, i] = tok.to(tokens.dtype)
            source[rows, i] = RESIDUAL
        stats.accepted += B - rows.numel()
        if on_round is not None:
            on_round(torch.full((B,), i + 1, dtype=torch.long, device=dev))
    stats.rounds, stats.image_rounds = N, B * N
    stats.proposed = stats.tested = B * N
    stats.steps_proposed = B * N * K if verify == "step" else 0
    stats.steps_accepted += int(steps_accepted)
    return {"tokens": tokens, "source": source}


@torch.no_grad()
def generate_speculative(target: nn.Module, draft: nn.Module, labels: torch.Tensor, settings: CausalSampleConfig,
                         gamma: int, residual_batch: int = 8, generator: torch.Generator | None = None,
                         max_residual_rounds: int = 100_000, verify: str = "step",
                         on_round: Callable[[torch.Tensor], None] | None = None, share_passes: bool = True) -> dict:
    """labels (B,) -> {"latents": (B, C, H, W), "stats": SpeculativeStats, "source": (B, N)
    int8 (:data:`ACCEPTED` or :data:`RESIDUAL` per token)}: samples of ``target``'s guided,
    tempered chain (``settings``, sampler euler_maruyama), proposed by ``draft`` (same token
    layout and settings). ``verify``: :data:`VERIFY_MODES`. ``on_round(n)`` hears the tokens
    known per image after each round. When the draft has the target's transformer
    (:func:`~ecar.models.ar.shares_transformer`: a draft *head*, ``ecar draft``) and
    ``share_passes``, the target's passes condition both heads: the proposals cost target
    passes plus the draft head's chains, and the verification is one head call."""
    if settings.sampler != "euler_maruyama":
        raise ValueError(f"speculative decoding compares path densities, so the head must be sampled by "
                         f"the Gaussian chain: use sampler euler_maruyama (got {settings.sampler!r})")
    if gamma < 1 or residual_batch < 1 or verify not in VERIFY_MODES:
        raise ValueError(f"gamma and residual_batch must be >= 1 and verify one of {VERIFY_MODES}, got "
                         f"{gamma}, {residual_batch}, {verify!r}")
    if (target.num_tokens, target.token_dim) != (draft.num_tokens, draft.token_dim):
        raise ValueError(f"draft tokens {draft.num_tokens}×{draft.token_dim} differ from the target's "
                         f"{target.num_tokens}×{target.token_dim}")
    chain = settings.chain()
    shared = share_passes and shares_transformer(target, draft)
    B, N, D, dev = labels.shape[0], target.num_tokens, target.token_dim, labels.device
    K, stds = chain.steps, chain.stds(dev)
    tnet = GuidedCausal(target, labels, settings.guidance, N + gamma)
    dnet = GuidedCausal(draft, labels, settings.guidance, N + gamma)
    dbl = tnet.doubled
    stats = SpeculativeStats()
    if gamma == 1:
        out = _generate_token_by_token(target, draft, tnet, dnet, shared, chain, verify, residual_batch, generator,
                                       max_residual_rounds, on_round, stats)
        return _result(target, tnet, dnet, stats, out["tokens"], out["source"])
    tokens = torch.zeros(B, N + gamma, D, device=dev)  # the output, finished by the target
    context = torch.zeros(B, N + gamma, D, device=dev) if chain.finishes else tokens  # the chain's states
    source = torch.zeros(B, N + gamma, dtype=torch.int8, device=dev)
    n = torch.zeros(B, dtype=torch.long, device=dev)
    steps = torch.arange(gamma, device=dev)
    batch = torch.arange(B, device=dev)
    while bool((n < N).any()):
        limit = (N - n).clamp(0, gamma)
        pos = n[:, None] + steps
        prev0 = context[batch, (n - 1).clamp_min(0)][:, None]
        # the draft proposes gamma tokens, recording each path and its transition means
        prev, props, paths, q_means, zq, zp = prev0, [], [], [], [], []
        for j in range(gamma):
            if shared:  # the target's pass gives both heads their conditions
                h = tnet.hidden(prev, pos[:, j:j + 1])
                z = draft.head_condition(h)
                zp.append(target.head_condition(h))
            else:
                z = dnet.condition(prev, pos[:, j:j + 1])
            noise = torch.randn((B, 1, D), generator=generator, device=dev)
            x, path, mq = chain.sample_steps(dnet.step_means(z, pos[:, j:j + 1], chain), noise, generator,
                                             record=True)
            props.append(x), paths.append(path), q_means.append(mq), zq.append(z)
            prev = x
        props, paths, q_means, zq = (torch.cat(v, dim=1) for v in (props, paths, q_means, zq))
        # the target verifies all of them: one causal pass, one head call of gamma*K rows per image
        # (gamma*(K + 1) with the target's finishing step)
        zp = torch.cat(zp, dim=1) if shared else tnet.condition(torch.cat([prev0, props[:, :-1]], dim=1), pos)
        stats.rounds += 1
        stats.image_rounds += int((limit > 0).sum())
        p_means, finished = _verify(tnet, zp, pos, chain, paths)
        if verify == "step":  # the transitions of all proposals in order, as one block
            lr, dist = _step_test(paths, p_means, q_means, stds)
            c, logw = block_accepted(lr.reshape(B, gamma * K), dist.reshape(B, gamma * K), limit * K, generator)
            a, k_rej = c // K, c % K
            stats.steps_proposed += int((limit * K).sum())
            stats.steps_accepted += int(c.sum())
        else:
            a = accepted_prefix(path_log_ratio(paths, p_means, q_means, stds), limit, generator)
        tokens.scatter_(1, pos[..., None].expand(-1, -1, D), finished.to(tokens.dtype))
        if chain.finishes:
            context.scatter_(1, pos[..., None].expand(-1, -1, D), props.to(context.dtype))
        source.scatter_(1, pos, torch.where(steps[None] < a[:, None], ACCEPTED, 0).to(torch.int8))
        rejected = a < limit
        stats.proposed += int(limit.sum())
        stats.tested += int(a.sum()) + int(rejected.sum())
        stats.accepted += int(a.sum())
        rows = rejected.nonzero()[:, 0]
        if rows.numel():
            cols, res_pos = a[rows], (n + a)[rows]
            new, tok = _replace(tnet, dnet, chain, verify, _pick(zp, rows, cols, dbl), _pick(zq, rows, cols, dbl),
                                res_pos, p_means[rows, cols], q_means[rows, cols],
                                (k_rej[rows], logw[rows]) if verify == "step" else None, residual_batch, generator,
                                max_residual_rounds, stats)
            if chain.finishes:
                context[rows, res_pos] = new.to(context.dtype)
            tokens[rows, res_pos] = tok.to(tokens.dtype)
            source[rows, res_pos] = RESIDUAL
        n = n + a + rejected.long()
        if on_round is not None:
            on_round(n.clone())
    return _result(target, tnet, dnet, stats, tokens[:, :N], source[:, :N])


def _result(target: nn.Module, tnet: GuidedCausal, dnet: GuidedCausal, stats: SpeculativeStats,
            tokens: torch.Tensor, source: torch.Tensor) -> dict:
    B, N = source.shape
    stats.tokens = B * N
    stats.target_passes, stats.target_head_calls = tnet.passes, tnet.head_calls
    stats.image_passes = B * tnet.passes
    stats.draft_passes, stats.draft_head_calls = dnet.passes, dnet.head_calls
    return {"latents": target.latent(tokens.contiguous()), "stats": stats, "source": source}
