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
of that token's chain is speculated again (:func:`~ecar.engine.speculative_residual.continue_chains`: the draft proposes the
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

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ecar.engine.causal import CausalNet, CausalSampleConfig, GuidedCausal, chain_token
from ecar.engine.speculative_cost import MAX_GAMMA, CallCosts, GammaMemory, choose_gamma
from ecar.engine.speculative_residual import chain_means, expand_rows, redraw, repeat_rows
from ecar.engine.speculative_rules import (SpeculativeStats, accepted_prefix, block_accepted, first_residual,
                                           gaussian_residual, step_test)
from ecar.models.ar import shares_transformer
from ecar.samplers.chain import GaussianChain, path_log_ratio

__all__ = ["ACCEPTED", "AUTO", "PLAIN", "RESIDUAL", "VERIFY_MODES", "SpeculativeStats", "accepted_prefix",
           "block_accepted", "chain_means", "first_residual", "gaussian_residual", "generate_speculative"]

VERIFY_MODES = ("step", "path")
"""What a proposal's acceptance test compares: each Gaussian transition of its chain (``step``)
or its whole path (``path``); both exact (docs/speculative.md)."""

AUTO = "auto"
"""``gamma=AUTO``: γ chosen per call from measured costs and acceptance (:mod:`ecar.engine.speculative_cost`)."""

PLAIN, ACCEPTED, RESIDUAL = 3, 1, 2
"""Codes of ``source``: where each output token came from (0 would be "never set"): the
target's own chain (plain decoding), an accepted proposal, a residual draw."""


def _pick(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, doubled: bool) -> torch.Tensor:
    """z (B or 2B, γ, F) -> (R or 2R, F): entry (rows[r], cols[r]) of each half."""
    if not doubled:
        return z[rows, cols]
    c, u = z.chunk(2)
    return torch.cat([c[rows, cols], u[rows, cols]])


def _verify(net: GuidedCausal, zp: torch.Tensor, pos: torch.Tensor, chain: GaussianChain,
            paths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's transition means (B, M, K, D) along recorded paths (B, M, K + 1, D) and the
    tokens it finishes them to (B, M, D): one head call of M·K rows per image (M·(K + 1) when
    the chain stops before t = 1)."""
    return chain.means_and_finish(net.velocity(*repeat_rows(zp, pos, paths.shape[2] - (not chain.finishes))), paths)


@dataclass
class _Run:
    """One call's networks, settings and output tensors, shared by its loops. ``tokens`` hold
    the output (finished by the target), ``context`` the chain's states the transformer reads
    (the same tensor when the chain ends at 1), ``source`` where each token came from; all
    sized N + γ_max so a round may run past the grid. ``clock`` (when set) collects the seconds
    of each kind of call for :class:`CallCosts`."""

    target: CausalNet
    draft: CausalNet
    tnet: GuidedCausal
    dnet: GuidedCausal
    shared: bool
    chain: GaussianChain
    verify: str
    residual_batch: int
    generator: torch.Generator | None
    max_rounds: int
    on_round: Callable[[torch.Tensor], None] | None
    stats: SpeculativeStats
    tokens: torch.Tensor
    context: torch.Tensor
    source: torch.Tensor
    clock: dict | None = None

    def tick(self, key: str, since: float) -> float:
        """Add the seconds since ``since`` to ``clock[key]`` (when timing); the time now."""
        now = time.perf_counter()
        if self.clock is not None:
            self.clock.setdefault(key, []).append(now - since)
        return now

    def conditions(self, prev: torch.Tensor, pos: torch.Tensor, draft: bool = True
                   ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The draft's and the target's head conditions of positions pos (B, L) after tokens
        prev (B, L, D): one target pass (which also serves the draft head when it shares the
        transformer), else a draft pass (with ``draft``; its cache must follow) and a target pass."""
        t0 = time.perf_counter()
        if self.shared:
            h = self.tnet.hidden(prev, pos)
            self.tick("pass", t0)
            return self.draft.head_condition(h), self.target.head_condition(h)
        zp = self.tnet.condition(prev, pos)
        t1 = self.tick("pass", t0)
        zq = self.dnet.condition(prev, pos) if draft else None
        self.tick("draft_pass", t1)
        return zq, zp


def _plain_tokens(run: _Run, start: int, stop: int | None = None, keep_draft: bool = False) -> None:
    """Positions start … stop − 1 (default: to the end) of every image by the target's own chain
    (plain decoding, γ = 0); with ``keep_draft`` a separate draft's cache follows, for a later
    choice that may still speculate (the pilot of :func:`_auto`)."""
    B, dev = run.tnet.batch, run.tokens.device
    for i in range(start, run.target.num_tokens if stop is None else stop):
        pos = torch.full((B, 1), i, dtype=torch.long, device=dev)
        _, zp = run.conditions(run.context[:, max(i - 1, 0)][:, None], pos, draft=keep_draft)
        t0 = time.perf_counter()
        x, tok = chain_token(run.tnet, run.chain, zp, pos, run.generator)
        run.tick("target_chain", t0)
        run.context[:, i], run.tokens[:, i] = x[:, 0].to(run.context.dtype), tok[:, 0].to(run.tokens.dtype)
        run.source[:, i] = PLAIN
        if run.on_round is not None:
            run.on_round(torch.full((B,), i + 1, dtype=torch.long, device=dev))


def _token_by_token(run: _Run, start: int, stop: int) -> None:
    """γ = 1 for positions start … stop − 1: every image gains exactly one token per round, so all
    stand at the same position and the round needs none of the ragged bookkeeping. The draft
    speculates the K steps of each token's chain; the target checks them in one head call
    (K + 1 rows with its finishing step) instead of running them one after the other."""
    tnet, dnet, chain, stats, g = run.tnet, run.dnet, run.chain, run.stats, run.generator
    B, D, dev = tnet.batch, run.target.token_dim, run.tokens.device
    K, stds, dbl = chain.steps, chain.stds(dev), tnet.doubled
    all_steps, one, zero = (torch.full((B,), v, dtype=torch.long, device=dev) for v in (K, 1, 0))
    steps_accepted: int | torch.Tensor = 0  # a tensor after the first token: summed without a sync per token
    for i in range(start, stop):
        pos = torch.full((B, 1), i, dtype=torch.long, device=dev)
        zq, zp = run.conditions(run.context[:, max(i - 1, 0)][:, None], pos)
        assert zq is not None  # the draft's conditions were asked for
        t0 = time.perf_counter()
        noise = torch.randn((B, 1, D), generator=g, device=dev)
        x, path, q_means = chain.sample_steps(dnet.step_means(zq, pos, chain), noise, g, record=True)
        t0 = run.tick("draft_chain", t0)
        p_means, finished = _verify(tnet, zp, pos, chain, path)
        t0 = run.tick("verify", t0)
        if run.verify == "step":
            lr, dist = step_test(path, p_means, q_means, stds)
            c, logw = block_accepted(lr[:, 0], dist[:, 0], all_steps, g)
            ok, step = c == K, (c.clamp(max=K - 1), logw)
            steps_accepted = steps_accepted + c.sum()
        else:
            ok, step = accepted_prefix(path_log_ratio(path, p_means, q_means, stds), one, g) == 1, None
        run.context[:, i], run.tokens[:, i] = x[:, 0].to(run.context.dtype), finished[:, 0].to(run.tokens.dtype)
        run.source[:, i] = ACCEPTED
        rows = (~ok).nonzero()[:, 0] if not bool(ok.all()) else zero[:0]
        t0 = run.tick("decide", t0)
        if rows.numel():
            cols = zero[:rows.numel()]
            new, tok = redraw(tnet, dnet, chain, run.verify, _pick(zp, rows, cols, dbl), _pick(zq, rows, cols, dbl),
                                pos[rows, 0], p_means[rows, 0], q_means[rows, 0],
                                None if step is None else (step[0][rows], step[1][rows]), run.residual_batch, g,
                                run.max_rounds, stats)
            if chain.finishes:
                run.context[rows, i] = new.to(run.context.dtype)
            run.tokens[rows, i] = tok.to(run.tokens.dtype)
            run.source[rows, i] = RESIDUAL
            run.tick("redo", t0)
        stats.accepted += B - rows.numel()
        if run.on_round is not None:
            run.on_round(torch.full((B,), i + 1, dtype=torch.long, device=dev))
    done = stop - start
    stats.rounds, stats.image_rounds = stats.rounds + done, stats.image_rounds + B * done
    stats.proposed, stats.tested = stats.proposed + B * done, stats.tested + B * done
    stats.steps_proposed += B * done * K if run.verify == "step" else 0
    stats.steps_accepted += int(steps_accepted)


def _rounds(run: _Run, start: int, gamma: int) -> None:
    """γ >= 2 from position ``start`` (every image there) to the end: the draft proposes γ tokens
    per image, the target verifies them in one head call, and every image advances by its own
    count (ragged caches)."""
    tnet, dnet, chain, stats, g = run.tnet, run.dnet, run.chain, run.stats, run.generator
    B, N, D, dev = tnet.batch, run.target.num_tokens, run.target.token_dim, run.tokens.device
    K, stds, dbl = chain.steps, chain.stds(dev), tnet.doubled
    n = torch.full((B,), start, dtype=torch.long, device=dev)
    steps = torch.arange(gamma, device=dev)
    batch = torch.arange(B, device=dev)
    while bool((n < N).any()):
        limit = (N - n).clamp(0, gamma)
        pos = n[:, None] + steps
        prev0 = run.context[batch, (n - 1).clamp_min(0)][:, None]
        # the draft proposes gamma tokens, recording each path and its transition means
        prev = prev0
        xs: list[torch.Tensor] = []  # per proposal: its token, path, draft means, conditions
        ps: list[torch.Tensor] = []
        qs: list[torch.Tensor] = []
        zqs: list[torch.Tensor] = []
        zps: list[torch.Tensor] = []
        for j in range(gamma):
            if run.shared:  # the target's pass gives both heads their conditions
                zj, zpj = run.conditions(prev, pos[:, j:j + 1])
                assert zj is not None
                z = zj
                zps.append(zpj)
            else:
                z = dnet.condition(prev, pos[:, j:j + 1])
            noise = torch.randn((B, 1, D), generator=g, device=dev)
            x, path, mq = chain.sample_steps(dnet.step_means(z, pos[:, j:j + 1], chain), noise, g, record=True)
            xs.append(x)
            ps.append(path)
            qs.append(mq)
            zqs.append(z)
            prev = x
        props, paths, q_means, zq = (torch.cat(v, dim=1) for v in (xs, ps, qs, zqs))
        # the target verifies all of them: one causal pass, one head call of gamma*K rows per image
        # (gamma*(K + 1) with the target's finishing step)
        zp = torch.cat(zps, dim=1) if run.shared else tnet.condition(torch.cat([prev0, props[:, :-1]], dim=1), pos)
        stats.rounds += 1
        stats.image_rounds += int((limit > 0).sum())
        p_means, finished = _verify(tnet, zp, pos, chain, paths)
        if run.verify == "step":  # the transitions of all proposals in order, as one block
            lr, dist = step_test(paths, p_means, q_means, stds)
            c, logw = block_accepted(lr.reshape(B, gamma * K), dist.reshape(B, gamma * K), limit * K, g)
            a, k_rej = c // K, c % K
            stats.steps_proposed += int((limit * K).sum())
            stats.steps_accepted += int(c.sum())
        else:
            a = accepted_prefix(path_log_ratio(paths, p_means, q_means, stds), limit, g)
        run.tokens.scatter_(1, pos[..., None].expand(-1, -1, D), finished.to(run.tokens.dtype))
        if chain.finishes:
            run.context.scatter_(1, pos[..., None].expand(-1, -1, D), props.to(run.context.dtype))
        run.source.scatter_(1, pos, torch.where(steps[None] < a[:, None], ACCEPTED, 0).to(torch.int8))
        rejected = a < limit
        stats.proposed += int(limit.sum())
        stats.tested += int(a.sum()) + int(rejected.sum())
        stats.accepted += int(a.sum())
        rows = rejected.nonzero()[:, 0]
        if rows.numel():
            cols, res_pos = a[rows], (n + a)[rows]
            new, tok = redraw(tnet, dnet, chain, run.verify, _pick(zp, rows, cols, dbl), _pick(zq, rows, cols, dbl),
                                res_pos, p_means[rows, cols], q_means[rows, cols],
                                (k_rej[rows], logw[rows]) if run.verify == "step" else None, run.residual_batch, g,
                                run.max_rounds, stats)
            if chain.finishes:
                run.context[rows, res_pos] = new.to(run.context.dtype)
            run.tokens[rows, res_pos] = tok.to(run.tokens.dtype)
            run.source[rows, res_pos] = RESIDUAL
        n = n + a + rejected.long()
        if run.on_round is not None:
            run.on_round(n.clone())


def _fixed_costs(run: _Run, labels: torch.Tensor, settings: CausalSampleConfig) -> tuple[float, float]:
    """Seconds of a one-image verification head call of 1 and of 4 proposals, on scratch caches
    (the fixed latency of a call and the cost a proposal adds at batch 1; no draw of the run)."""
    net = GuidedCausal(run.target, labels[:1], settings.guidance, 1)
    pos = torch.zeros((1, 1), dtype=torch.long, device=labels.device)
    zp = run.target.head_condition(net.hidden(run.context[:1, :1], pos))
    out = []
    for m in (1, 4):
        z, p = expand_rows(zp[:, 0], m), pos.expand(1, m)
        paths = torch.zeros((1, m, run.chain.steps + 1, run.target.token_dim), device=labels.device)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            _verify(net, z, p, run.chain, paths)
            best = min(best, time.perf_counter() - t0)
        out.append(best)
    return out[0], out[1]


def _measured_costs(run: _Run, fixed: tuple[float, float], batch: int) -> CallCosts:
    """:class:`CallCosts` from a pilot's clock (the fastest of each kind: the first calls warm up)."""
    c = run.clock
    assert c is not None, "the pilot runs with a clock"

    def best(key: str) -> float:
        return min(c[key]) if c.get(key) else 0.0

    v1, v4 = fixed
    verify_b = best("verify")  # one proposal per image at the call's batch
    per_token = max((v4 - v1) / 3, (verify_b - v1) / (batch - 1) if batch > 1 else 0.0, 0.0)
    fixed_part = max(verify_b - per_token * batch, 0.0)
    return CallCosts(pass_=best("pass"), target_chain=best("target_chain"), draft_pass=best("draft_pass"),
                     draft_chain=best("draft_chain"), verify_fixed=fixed_part, verify_per_token=per_token,
                     decide=2 * best("decide"), extra_position=0.0 if run.shared else 0.5 * best("pass"))


def _choice(costs: CallCosts, alpha: float, batch: int, tokens: int, **why: Any) -> dict:
    """The γ :func:`choose_gamma` picks for the remaining ``tokens`` and why (``stats.choices``)."""
    gamma, pred = choose_gamma(costs, alpha, batch, tokens)
    return {"gamma": gamma, **why, "acceptance": alpha, "costs": costs.as_dict(),
            "predicted_s": {str(k): v for k, v in pred.items()},
            "predicted_speedup": pred[0] / pred[gamma] if pred[gamma] > 0 else 1.0}


def _auto(run: _Run, labels: torch.Tensor, settings: CausalSampleConfig) -> tuple[dict, CallCosts]:
    """Plain decoding of the first tokens and γ = 1 speculation of the next ones, timed (real
    work of the call), then γ for the rest from :func:`choose_gamma` at the measured acceptance;
    and the measured costs."""
    B, N = run.tnet.batch, run.target.num_tokens
    run.clock = {}
    plain = min(2, N)
    spec = min(N - plain, max(1, min(max(2, -(-32 // B)), N // 4)))  # ~32 tested tokens, at most a quarter
    fixed = _fixed_costs(run, labels, settings)
    _plain_tokens(run, 0, plain, keep_draft=not run.shared)  # the separate draft's cache kept in step
    before = (run.stats.accepted, run.stats.tested)
    _token_by_token(run, plain, plain + spec)
    tested = run.stats.tested - before[1]
    alpha = (run.stats.accepted - before[0]) / tested if tested else 1.0
    costs = _measured_costs(run, fixed, B)
    run.clock = None
    return _choice(costs, alpha, B, N - plain - spec, start=plain + spec, pilot_plain=plain, pilot_gamma1=spec), costs


@torch.no_grad()
def generate_speculative(target: CausalNet, draft: CausalNet, labels: torch.Tensor, settings: CausalSampleConfig,
                         gamma: int | str = AUTO, residual_batch: int = 8, generator: torch.Generator | None = None,
                         max_residual_rounds: int = 1000, verify: str = "step",
                         on_round: Callable[[torch.Tensor], None] | None = None, share_passes: bool = True,
                         memory: GammaMemory | None = None) -> dict:
    """labels (B,) -> {"latents": (B, C, H, W), "stats": SpeculativeStats, "source": (B, N)
    int8 (:data:`PLAIN`, :data:`ACCEPTED` or :data:`RESIDUAL` per token)}: samples of
    ``target``'s guided, tempered chain (``settings``, sampler euler_maruyama), proposed by
    ``draft`` (same token layout and settings). ``gamma``: proposals per round, 0 for plain
    decoding, or :data:`AUTO` (the first tokens are decoded plainly and at γ = 1 while the
    costs and the acceptance are measured, the rest at the γ of
    :func:`~ecar.engine.speculative_cost.choose_gamma`; ``stats.choices`` says why). With a
    ``memory`` that already knows this batch size and settings, :data:`AUTO` skips the pilot and
    chooses from the remembered costs and the acceptance pooled over earlier calls; every call
    adds its counts (and a pilot its costs) to it.
    ``verify``: :data:`VERIFY_MODES`. ``on_round(n)`` hears the tokens known per image after
    each round. When the draft has the target's transformer
    (:func:`~ecar.models.ar.shares_transformer`: a draft *head*, ``ecar draft``) and
    ``share_passes``, the target's passes condition both heads: the proposals cost target
    passes plus the draft head's chains, and the verification is one head call. A residual
    draw that finds no sample in ``max_residual_rounds`` rounds of candidates raises
    RuntimeError (a rule that leaves the residual no mass fails fast, not by hanging)."""
    if settings.sampler != "euler_maruyama":
        raise ValueError(f"speculative decoding compares path densities, so the head must be sampled by "
                         f"the Gaussian chain: use sampler euler_maruyama (got {settings.sampler!r})")
    if not (gamma == AUTO or (isinstance(gamma, int) and gamma >= 0)) or residual_batch < 1 \
            or verify not in VERIFY_MODES:
        raise ValueError(f"gamma must be an integer >= 0 or {AUTO!r}, residual_batch >= 1 and verify one of "
                         f"{VERIFY_MODES}; got {gamma!r}, {residual_batch}, {verify!r}")
    if (target.num_tokens, target.token_dim) != (draft.num_tokens, draft.token_dim):
        raise ValueError(f"draft tokens {draft.num_tokens}×{draft.token_dim} differ from the target's "
                         f"{target.num_tokens}×{target.token_dim}")
    chain = settings.chain()
    B, N, D, dev = labels.shape[0], target.num_tokens, target.token_dim, labels.device
    room = N + (gamma if isinstance(gamma, int) else MAX_GAMMA)
    tokens = torch.zeros(B, room, D, device=dev)
    run = _Run(target, draft, GuidedCausal(target, labels, settings.guidance, room),
               GuidedCausal(draft, labels, settings.guidance, room), share_passes and shares_transformer(target, draft),
               chain, verify, residual_batch, generator, max_residual_rounds, on_round, SpeculativeStats(), tokens,
               torch.zeros(B, room, D, device=dev) if chain.finishes else tokens,
               torch.zeros(B, room, dtype=torch.int8, device=dev))
    key = f"{settings!r}, verify={verify}"
    known = memory.recall(key, B) if memory is not None and gamma == AUTO else None
    measured: CallCosts | None = None
    if gamma != AUTO:
        choice: dict[str, Any] = {"gamma": gamma, "start": 0}
    elif known is not None:
        choice = _choice(*known, B, N, start=0, remembered=True)
    else:
        choice, measured = _auto(run, labels, settings)
    choice["batch"] = B
    start, chosen = int(choice["start"]), int(choice["gamma"])
    if chosen == 0:
        _plain_tokens(run, start)
    elif chosen == 1:
        _token_by_token(run, start, N)
    else:
        _rounds(run, start, chosen)
    run.stats.choices.append(choice)
    if memory is not None:
        memory.learn(key, B, run.stats.accepted, run.stats.tested, measured)
    return _result(run, tokens[:, :N], run.source[:, :N])


def _result(run: _Run, tokens: torch.Tensor, source: torch.Tensor) -> dict:
    stats, tnet, dnet = run.stats, run.tnet, run.dnet
    B, N = source.shape
    stats.tokens = B * N
    stats.target_passes, stats.target_head_calls = tnet.passes, tnet.head_calls
    stats.image_passes = B * tnet.passes
    stats.draft_passes, stats.draft_head_calls = dnet.passes, dnet.head_calls
    return {"latents": run.target.latent(tokens.contiguous()), "stats": stats, "source": source}
