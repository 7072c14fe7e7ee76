"""The acceptance and residual rules of exact speculative decoding (docs/speculative.md):
what decides which proposals are kept and what replaces the first rejected one. Pure tensor
functions, no network call; the loops that use them are :mod:`ecar.engine.speculative`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ecar.samplers.chain import step_log_ratio

__all__ = ["SpeculativeStats", "accepted_prefix", "block_accepted", "check_rounds", "first_residual",
           "gaussian_residual", "step_test"]


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
    residual_inverse: int = 0
    """Residual draws that rejection did not find in its rounds and :func:`gaussian_residual_inverse`
    made exactly instead (a residual of tiny mass relative to its weight)."""
    rounds: int = 0
    image_rounds: int = 0
    seconds: float = 0.0
    choices: list = field(default_factory=list)
    """One entry per call: the γ it ran with and, for ``gamma="auto"``, why
    (:func:`ecar.engine.speculative_cost.choose_gamma`: the measured acceptance and costs, the
    predicted seconds per γ)."""

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


def step_test(path: torch.Tensor, p_means: torch.Tensor, q_means: torch.Tensor, stds: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """What :func:`block_accepted` reads of recorded transitions (…, K + 1, D) and their two means
    (…, K, D): the log ratio (…, K) of each and the distance of its means in stds (…, K)."""
    return step_log_ratio(path, p_means, q_means, stds), (p_means - q_means).norm(dim=-1) / stds


def gaussian_residual(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor, candidates: int,
                      generator: torch.Generator | None, max_rounds: int, stats: SpeculativeStats,
                      log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of the normalised residual max(0, w·N(m_p, s²I) − N(m_q, s²I)) (w = 1
    unless ``log_weight`` (R,) gives log w <= 0, :func:`block_accepted`): rejection from
    N(m_p, s²I) with acceptance 1 − q/(w·p) (:func:`first_residual`), ``candidates`` per row and
    round, until every row has one; rows still without one after ``max_rounds`` rounds (a
    residual whose mass is tiny against its weight: rejection would need millions of
    candidates) are drawn exactly by :func:`gaussian_residual_inverse`. The law is the same
    either way. mean_p, mean_q (R, D), std (R,) -> (R, D). No network call."""
    out = torch.empty_like(mean_p)
    rows = torch.arange(mean_p.shape[0], device=mean_p.device)
    rounds = 0
    while rows.numel():
        if rounds >= max_rounds:
            lw = None if log_weight is None else log_weight[rows]
            out[rows] = gaussian_residual_inverse(mean_p[rows], mean_q[rows], std[rows], lw, generator,
                                                  rounds, candidates)
            stats.residual_inverse += int(rows.numel())
            break
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


def gaussian_residual_inverse(mean_p: torch.Tensor, mean_q: torch.Tensor, std: torch.Tensor,
                              log_weight: torch.Tensor | None, generator: torch.Generator | None,
                              rounds: int = 0, candidates: int = 0) -> torch.Tensor:
    """One exact draw per row of the normalised residual max(0, w·N(m_p, s²I) − N(m_q, s²I)),
    without rejection. The two Gaussians share their covariance, so they differ only along
    e = (m_p − m_q)/|m_p − m_q|: across e both are N(m_q⊥, s²), and along e, in units of s
    from m_q, the residual is w·φ(τ − α) − φ(τ) for τ above τ₀ = α/2 − log(w)/α
    (α = |m_p − m_q|/s) and 0 below. Its CDF is closed form,
    G(τ) = w·(S(τ₀ − α) − S(τ − α)) − (S(τ₀) − S(τ)) with S the normal survival function and
    mass r = G(∞); τ solves G(τ) = u·r (bisection in float64). Raises :class:`RuntimeError`
    (as an exhausted rejection does) where the residual has no mass."""
    d = (mean_p - mean_q).double()
    dist = d.norm(dim=-1)
    sd = std.double()
    alpha = dist / sd
    log_w = torch.zeros_like(alpha) if log_weight is None else log_weight.double()
    tau0 = alpha / 2 - log_w / alpha
    w = log_w.exp()

    def surv(x: torch.Tensor) -> torch.Tensor:
        return torch.special.ndtr(-x)

    p0, q0 = surv(tau0 - alpha), surv(tau0)  # the two survivals at tau0: the same in every bisection step
    mass = w * p0 - q0
    if not bool(torch.isfinite(mass).all()) or not bool((mass > 0).all()):
        check_rounds(max(rounds, 1), max(rounds, 1), int((~(mass > 0)).sum()), candidates)
    u = torch.rand(alpha.shape, generator=generator, device=alpha.device, dtype=torch.float64)
    goal = u * mass
    lo, hi = tau0.clone(), torch.maximum(tau0, alpha) + 40.0
    for _ in range(200):  # the residual's CDF rises monotonically from 0 at tau0 to mass
        mid = (lo + hi) / 2
        below = w * (p0 - surv(mid - alpha)) - (q0 - surv(mid)) < goal
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    tau = (lo + hi) / 2
    e = d / dist[:, None]
    z = torch.randn(d.shape, generator=generator, device=d.device, dtype=torch.float64)
    z = z - (z * e).sum(-1, keepdim=True) * e  # the part across e: the two Gaussians' common law
    x = mean_q.double() + sd[:, None] * (tau[:, None] * e + z)
    return x.to(mean_p.dtype)


def check_rounds(rounds: int, max_rounds: int, rows: int, candidates: int) -> None:
    if rounds >= max_rounds:
        raise RuntimeError(
            f"residual sampling found no sample in {rounds}×{candidates} candidates for {rows} token(s): the "
            "draft and target densities agree almost everywhere there; raise residual_batch or use a draft "
            "that differs less erratically from the target")


