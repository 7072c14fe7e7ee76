"""What replaces a rejected proposal in exact speculative decoding (docs/speculative.md): the
redraw loops, which call the networks, around the pure rules of :mod:`ecar.engine.speculative_rules`.

``verify="path"``: rejection from the target's own chain with acceptance 1 − q(path)/p(path)
(:func:`residual_paths`); ``verify="step"``: the rejected transition from the weighted Gaussian
residual, then the rest of that token's chain speculated again (:func:`continue_chains`). The
loops that call them are :mod:`ecar.engine.speculative`.
"""

from __future__ import annotations

import torch

from ecar.engine.causal import GuidedCausal
from ecar.engine.speculative_rules import (SpeculativeStats, block_accepted, check_rounds, first_residual,
                                           gaussian_residual, step_test)
from ecar.samplers.chain import GaussianChain, path_log_ratio

__all__ = ["chain_means", "continue_chains", "expand_rows", "finish_rows", "redraw", "repeat_rows", "residual_paths"]


def expand_rows(z: torch.Tensor, m: int) -> torch.Tensor:
    """(R, F) -> (R, m, F)."""
    return z[:, None].expand(-1, m, -1)


def repeat_rows(zq: torch.Tensor, pos: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditions zq (B or 2B, M, F) and positions pos (B, M), each repeated for j rows per token."""
    return (zq[:, :, None].expand(-1, -1, j, -1).reshape(zq.shape[0], -1, zq.shape[-1]),
            pos[:, :, None].expand(-1, -1, j).reshape(pos.shape[0], -1))


def chain_means(net: GuidedCausal, zq: torch.Tensor, pos: torch.Tensor, chain: GaussianChain,
                 states: torch.Tensor) -> torch.Tensor:
    """Means of ``net``'s chain at states (B, M, K, D) for conditions zq (B or 2B, M, F) at
    positions pos (B, M): one head call of M·K rows per image."""
    return chain.means(net.velocity(*repeat_rows(zq, pos, chain.steps)), states)


def finish_rows(net: GuidedCausal, chain: GaussianChain, x: torch.Tensor, z: torch.Tensor, pos: torch.Tensor
            ) -> torch.Tensor:
    """Chain states x (R, D) at t = ``end`` of rows with conditions z (R or 2R, F) at positions pos
    (R,) -> the tokens ``net`` finishes them to (one head call; x itself when the chain ends at 1)."""
    if not chain.finishes:
        return x
    return chain.finish(net.velocity(z[:, None], pos[:, None]), x[:, None])[:, 0]


def residual_paths(tnet: GuidedCausal, dnet: GuidedCausal, chain: GaussianChain, zp: torch.Tensor,
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
        check_rounds(rounds, max_rounds, rows.numel(), m)
        rounds += 1
        prow = pos[rows, None].expand(-1, m)
        noise = torch.randn((rows.numel(), m, out.shape[-1]), generator=generator, device=pos.device)
        y, ypath, ym = chain.sample(tnet.velocity(expand_rows(zp, m), prow), noise, generator, record=True)
        qm = chain_means(dnet, expand_rows(zq, m), prow, chain, ypath[:, :, :-1])
        first = first_residual(path_log_ratio(ypath, ym, qm, stds), generator)
        ok = first >= 0
        stats.residual_candidates += int(ok.numel()) * m
        out[rows[ok]] = y[ok.nonzero()[:, 0], first[ok]].to(out.dtype)
        rows, zp, zq = rows[~ok], GuidedCausal.rows(zp, ~ok, dbl), GuidedCausal.rows(zq, ~ok, dbl)
    stats.residual_rounds += rounds
    return out


def continue_chains(tnet: GuidedCausal, dnet: GuidedCausal, chain: GaussianChain, x: torch.Tensor,
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
        cur, states, means = state[rows, None], [state[rows, None]], []
        m = dnet.step_means(rq, p, chain)
        for k in range(s0, K):
            mean = m(cur, k)
            eps = torch.randn(cur.shape, generator=generator, device=dev, dtype=cur.dtype)
            cur = torch.where((d <= k)[:, None, None], mean + stds[k] * eps, cur)
            states.append(cur)
            means.append(mean)
        path = torch.stack(states, dim=2)  # (r, 1, K + 1 − s0, D)
        q_means = torch.stack(means, dim=2) if means else path[:, :, :0]
        p_means, finished = chain.means_and_finish(tnet.velocity(rp, p), path, s0)
        held = torch.arange(s0, K, device=dev)[None] < d[:, None]  # a copied state: ratio 1, kept
        lr, dist = step_test(path, p_means, q_means, stds[s0:])
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


def redraw(tnet: GuidedCausal, dnet: GuidedCausal, chain: GaussianChain, verify: str, zp: torch.Tensor,
             zq: torch.Tensor, pos: torch.Tensor, p_means: torch.Tensor, q_means: torch.Tensor,
             step: tuple[torch.Tensor, torch.Tensor] | None, residual_batch: int, generator, max_rounds: int,
             stats: SpeculativeStats) -> tuple[torch.Tensor, torch.Tensor]:
    """New draws for R rejected proposals with target and draft conditions zp, zq (R or 2R, F) at
    positions pos (R,): the chain state (R, D) at its end and the token (R, D) the target
    finishes it to. ``step`` (verify ``step``): the transition k (R,) to redraw and the log
    weight (R,) of its residual (:func:`block_accepted`); it is drawn from the weighted Gaussian
    residual of the two means (R, K, D) there, then the rest of the chain is speculated again
    (:func:`continue_chains`). ``path``: the path residual."""
    stats.residual_tokens += pos.shape[0]
    if verify == "step":
        assert step is not None, "verify=step redraws the transition its block test stopped at"
        k, log_weight = step
        r, m = torch.arange(k.shape[0], device=k.device), max(residual_batch, 64)
        x = gaussian_residual(p_means[r, k], q_means[r, k], chain.stds(k.device)[k], m, generator, max_rounds, stats,
                              log_weight)
        return continue_chains(tnet, dnet, chain, x, k + 1, zp, zq, pos, m, generator, max_rounds, stats)
    new = residual_paths(tnet, dnet, chain, zp, zq, pos, residual_batch, generator, max_rounds, stats)
    return new, finish_rows(tnet, chain, new, zp, pos)
