"""Exact speculative decoding (docs/speculative.md): the acceptance and residual rules on a toy
with closed-form densities (2-D Gaussian mixtures; a tempered rule is caught by the same
test), the path density of the Gaussian chain, and the engine on random-weight causal
networks: draft = target accepts everything, a different draft gives the target's samples,
every token comes from an accepted proposal or a residual sample, and no fallback exists.
The first two engine facts are checked again on tiny checkpoints trained on digits by the
product's trainer (last section)."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as sps

from ecar import load
from ecar.build import LatentSpec
from ecar.config import load_config
from ecar.engine.speculative import ACCEPTED, RESIDUAL, accepted_prefix, first_residual, generate_speculative
from ecar.pipeline import check_draft_pair
from ecar.methods.ar import AR_METHOD
from ecar.samplers.chain import GaussianChain, path_log_ratio, step_log_ratio
from ecar.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]

ALPHA = 0.01
"""Family-wise significance of every distribution test (Bonferroni over its projections)."""


# --------------------------------------------------------------------------- toy: 2-D mixtures


class Mixture:
    """Isotropic 2-D Gaussian mixture with closed-form density, sampler and projected CDF."""

    def __init__(self, weights, means, stds):
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.mu = torch.tensor(means, dtype=torch.float64)
        self.sd = torch.tensor(stds, dtype=torch.float64)

    def sample(self, n: int, g: torch.Generator) -> torch.Tensor:
        comp = torch.multinomial(self.w, n, replacement=True, generator=g)
        return self.mu[comp] + self.sd[comp, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        d2 = ((x[..., None, :] - self.mu) ** 2).sum(-1)
        logc = torch.log(self.w) - 2 * torch.log(self.sd) - math.log(2 * math.pi) - d2 / (2 * self.sd**2)
        return torch.logsumexp(logc, dim=-1)

    def cdf(self, direction: torch.Tensor):
        """CDF of ⟨x, direction⟩ (unit direction): a 1-D mixture."""
        m = (self.mu @ direction).numpy()

        def f(v):
            return sum(w * sps.norm.cdf(v, loc=mi, scale=s) for w, mi, s in zip(self.w.numpy(), m, self.sd.numpy()))

        return f


TARGET = Mixture([0.5, 0.3, 0.2], [[-1.0, 0.0], [1.5, 1.0], [0.5, -2.0]], [0.5, 0.7, 0.4])
DRAFT = Mixture([0.3, 0.4, 0.3], [[-0.8, 0.3], [1.2, 0.8], [0.0, -1.5]], [0.7, 0.6, 0.8])
DIRECTIONS = [torch.tensor(v, dtype=torch.float64) / math.hypot(*v) for v in ([1, 0], [0, 1], [1, 1], [1, -1])]


def speculative_toy(n: int, g: torch.Generator, accept_log_factor: float = 0.0, batch: int = 8) -> torch.Tensor:
    """n tokens of TARGET proposed by DRAFT with the engine's rules (:func:`accepted_prefix`,
    :func:`first_residual`). ``accept_log_factor`` > 0 makes the acceptance test
    min(1, λ·p/q) with log λ = the factor, keeping the residual untempered — the kind of
    tempered rule that is not exact."""
    x = DRAFT.sample(n, g)
    lr = (TARGET.log_prob(x) - DRAFT.log_prob(x) + accept_log_factor)[:, None]
    ok = accepted_prefix(lr, torch.ones(n, dtype=torch.long), g) == 1
    out = x.clone()
    rows = (~ok).nonzero()[:, 0]
    while rows.numel():
        y = TARGET.sample(rows.numel() * batch, g).reshape(rows.numel(), batch, 2)
        first = first_residual(TARGET.log_prob(y) - DRAFT.log_prob(y), g)
        hit = first >= 0
        out[rows[hit]] = y[hit.nonzero()[:, 0], first[hit]]
        rows = rows[~hit]
    return out


def ks_pvalues(samples: torch.Tensor) -> list[float]:
    """One-sample KS p-values of the projections of ``samples`` against TARGET's exact CDFs."""
    return [sps.kstest((samples @ d).numpy(), TARGET.cdf(d)).pvalue for d in DIRECTIONS]


def test_toy_speculative_samples_follow_the_target():
    g = torch.Generator().manual_seed(0)
    samples = speculative_toy(20_000, g)
    assert min(ks_pvalues(samples)) > ALPHA / len(DIRECTIONS)
    # the draft itself is far from the target: the test has power on this pair
    assert min(ks_pvalues(DRAFT.sample(20_000, g))) < 1e-6


def test_toy_tempered_acceptance_is_caught():
    """Accepting with min(1, 2·p/q) but sampling the untempered residual (the released
    CSpD code's kind of rule) is rejected by the same test at the same size."""
    samples = speculative_toy(20_000, torch.Generator().manual_seed(0), accept_log_factor=math.log(2.0))
    assert min(ks_pvalues(samples)) < ALPHA / len(DIRECTIONS)


def test_residual_rule_samples_the_normalised_residual():
    """Accepted residual candidates follow max(0, p − q)/TV: checked on one projection
    against the residual's CDF by numerical integration on a grid."""
    g = torch.Generator().manual_seed(1)
    y = TARGET.sample(200_000, g).reshape(-1, 1, 2)
    first = first_residual(TARGET.log_prob(y) - DRAFT.log_prob(y), g)
    kept = y[first >= 0, 0]
    assert kept.shape[0] > 5_000
    grid = torch.stack(torch.meshgrid(torch.linspace(-5, 5, 801, dtype=torch.float64),
                                      torch.linspace(-5, 5, 801, dtype=torch.float64), indexing="ij"), -1)
    r = (TARGET.log_prob(grid).exp() - DRAFT.log_prob(grid).exp()).clamp_min(0)
    xs = grid[:, 0, 0].numpy()
    marginal = r.sum(1).numpy()
    cdf = marginal.cumsum() / marginal.sum()
    p = sps.kstest(kept[:, 0].numpy(), lambda v: np.interp(v, xs, cdf)).pvalue
    assert p > ALPHA


def test_accepted_prefix_stops_at_the_first_rejection_and_the_limit():
    g = torch.Generator().manual_seed(0)
    lr = torch.tensor([[0.0, 0.0, -1e9, 0.0], [0.0, 0.0, 0.0, 0.0], [-1e9, 0.0, 0.0, 0.0]])
    a = accepted_prefix(lr, torch.tensor([4, 3, 4]), g)
    assert a.tolist() == [2, 3, 0]
    assert first_residual(torch.tensor([[-1.0, 0.0, 50.0, 50.0]]), g).tolist() == [2]
    assert first_residual(torch.tensor([[-1.0, 0.0]]), g).tolist() == [-1]


def linear_chain_toy(n: int, g: torch.Generator) -> torch.Tensor:
    """States x_1 … x_L (n, L) of a 1-D linear Gaussian chain x_{k+1} ~ N(A_k·x_k + C_k, s_k²),
    x_0 = 0, proposed by a draft chain with other coefficients and kept by block verification
    (:func:`block_accepted`); transition τ + 1 of a row cut short is drawn from the weighted
    residual (:func:`gaussian_residual`), the rest from the target."""
    from ecar.engine.speculative import SpeculativeStats, block_accepted, gaussian_residual

    x = torch.zeros(n, 1, dtype=torch.float64)
    states, mq = [x], []
    for k in range(len(TOY_S)):  # the draft proposes every transition
        mq.append(TOY_DRAFT[k][0] * states[-1] + TOY_DRAFT[k][1])
        states.append(mq[-1] + TOY_S[k] * torch.randn(n, 1, generator=g, dtype=torch.float64))
    mp = [TOY_TARGET[k][0] * states[k] + TOY_TARGET[k][1] for k in range(len(TOY_S))]
    path, mp, mq, sd = torch.stack(states, 1), torch.stack(mp, 1), torch.stack(mq, 1), torch.tensor(TOY_S)
    lr = step_log_ratio(path, mp, mq, sd)
    tau, logw = block_accepted(lr, (mp - mq).norm(dim=-1) / sd, torch.full((n,), len(TOY_S)), g)
    out = path[:, 1:, 0].clone()
    for t in range(len(TOY_S)):  # rows cut at transition t + 1: residual there, then the target
        rows = (tau == t).nonzero()[:, 0]
        if not rows.numel():
            continue
        y = gaussian_residual(mp[rows, t], mq[rows, t], torch.full((rows.numel(),), TOY_S[t], dtype=torch.float64),
                              16, g, 10_000, SpeculativeStats(), logw[rows])
        out[rows, t] = y[:, 0]
        for k in range(t + 1, len(TOY_S)):
            y = TOY_TARGET[k][0] * y + TOY_TARGET[k][1] + TOY_S[k] * torch.randn(y.shape, generator=g,
                                                                                  dtype=torch.float64)
            out[rows, k] = y[:, 0]
    return out


TOY_TARGET = [(1.0, 0.8), (0.7, -0.5), (1.2, 0.3), (0.9, 0.6)]
TOY_DRAFT = [(1.0, 0.5), (0.8, -0.2), (1.0, 0.1), (1.0, 0.4)]
TOY_S = [0.6, 0.5, 0.4, 0.3]


def _linear_chain_laws(coefficients) -> list:
    """A linear Gaussian chain's states are Gaussian: the exact law of x_1 … x_L."""
    m, v, out = 0.0, 0.0, []
    for (a, c), s in zip(coefficients, TOY_S):
        m, v = a * m + c, a * a * v + s * s
        out.append(sps.norm(loc=m, scale=math.sqrt(v)))
    return out


def _chain_pvalue(states: torch.Tensor) -> float:
    """The smallest KS p-value of the states x_1 … x_L against the target's laws, × L (Bonferroni)."""
    laws = _linear_chain_laws(TOY_TARGET)
    return len(laws) * min(sps.kstest(states[:, k].numpy(), law.cdf).pvalue for k, law in enumerate(laws))


def test_block_verification_of_a_chain_follows_the_target():
    """20,000 chains: the block-verified states pass KS tests against the target's exact laws,
    and the draft's own chain fails them (the test has power on this pair). (Drawing from the
    unweighted residual instead is wrong only for rows cut after a prefix of weight < 1, which
    block verification rarely cuts; the weighted draw itself is checked exactly in
    test_gaussian_residual_samples_the_residual_of_two_gaussians.)"""
    g = torch.Generator().manual_seed(0)
    assert _chain_pvalue(linear_chain_toy(20_000, g)) > ALPHA
    draft = np.stack([law.rvs(20_000, random_state=k) for k, law in enumerate(_linear_chain_laws(TOY_DRAFT))], 1)
    assert _chain_pvalue(torch.from_numpy(draft)) < ALPHA


def test_block_accepted_keeps_what_it_must_and_never_less_than_each_test_alone():
    """Ratios >= 1 keep the whole block (up to each row's limit) with weight 1; a block cut by
    one bad transition keeps it with probability p_L = E[1{u < p_L}] and, on average, at least
    as many transitions as testing each transition alone."""
    from ecar.engine.speculative import block_accepted

    g = torch.Generator().manual_seed(0)
    tau, logw = block_accepted(torch.zeros(3, 4), torch.zeros(3, 4), torch.tensor([4, 2, 1]), g)
    assert tau.tolist() == [4, 2, 1] and logw.tolist() == [0.0, 0.0, 0.0]
    lr = torch.tensor([[0.5, -1.0, 0.4, -0.2]]).expand(200_000, -1)
    dist = torch.tensor([[0.3, 0.8, 0.5, 0.4]]).expand(200_000, -1)
    tau, _ = block_accepted(lr, dist, torch.full((200_000,), 4), g)
    p_last = math.exp(0.5 - 1.0 + 0.4 - 0.2 - 0.5)  # S_4 − max_j S_j with S = (0, .5, −.5, −.1, −.3)
    assert float((tau == 4).double().mean()) == pytest.approx(p_last, abs=0.005)
    single = accepted_prefix(lr, torch.full((200_000,), 4), g)
    assert float(tau.double().mean()) > float(single.double().mean())


# --------------------------------------------------------------------------- the Gaussian chain


def test_path_log_ratio_is_the_difference_of_exact_path_log_densities():
    chain = GaussianChain(4, noise_scale=0.7, temperature=0.8)
    g = torch.Generator().manual_seed(0)

    def field(a):
        return lambda x, t: a * x + (1 - t)[..., None] * 0.3

    x, path, mp = chain.sample(field(-0.5), torch.randn(2, 3, 5, generator=g), g, record=True)
    mq = chain.means(field(0.4), path[:, :, :-1])
    assert torch.allclose(chain.means(field(-0.5), path[:, :, :-1]), mp, atol=1e-6)
    stds = chain.stds()
    assert bool((stds > 0).all())  # the last step is stochastic too
    normal = torch.distributions.Normal

    def logp(means):
        start = normal(0.0, chain.temperature).log_prob(path[:, :, 0].double()).sum((-1,))
        steps = normal(means.double(), stds.double()[:, None]).log_prob(path[:, :, 1:].double()).sum((-1, -2))
        return start + steps

    assert torch.allclose(path_log_ratio(path, mp, mq, stds), logp(mp) - logp(mq), atol=1e-6)
    assert torch.equal(x, path[:, :, -1])


# --------------------------------------------------------------------------- the engine


def _net(seed: int, *over: str):
    """ar-tiny on 4×4×1 latents (patch 2: 4 tokens of dim 4), weights drawn from ``seed`` so
    no zero-initialised layer makes draft and target agree."""
    cfg = load_config(None, ["model.name=ar-tiny", "sample.steps=3", "sample.cfg=2.0",
                             "sample.temperature=0.9", *over])
    model = AR_METHOD.build(cfg.model, LatentSpec(1, 4, 10))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return cfg, model.eval()


def _near(model, scale: float, seed: int):
    """A copy of ``model`` with every weight moved by ``scale``·N(0, 1): a draft close to it."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return draft


FINISHING = ("sample.time_power=2", "sample.chain_end=0.8")
"""A chain on a power grid that stops at t = 0.8 and is finished by the target's Euler step."""


def test_draft_equal_to_target_accepts_every_token_one_at_a_time():
    """γ = 1 (the token-by-token loop): every chain accepted, one target pass and one
    verification head call per token, the draft head's steps on the shared passes."""
    cfg, target = _net(1, "sample.gamma=1", *FINISHING)
    labels = torch.arange(64) % 10
    out = AR_METHOD.drafting.speculative(target, target, cfg.sample, labels, torch.Generator().manual_seed(0))
    st = out["stats"].as_dict()
    assert st["acceptance_rate"] == 1.0 and st["residual_tokens"] == 0 and st["tokens_per_round"] == 1.0
    assert bool((out["source"] == ACCEPTED).all())
    assert st["target_passes"] == 4 and st["target_head_calls"] == 4 and st["draft_passes"] == 0
    assert st["draft_head_calls"] == 4 * 3  # the draft's chain: sample.steps=3 per token


@pytest.mark.parametrize("chain", [(), ("sample.time_power=2", "sample.chain_end=0.8")])
def test_draft_equal_to_target_accepts_every_proposal(chain):
    cfg, target = _net(1, "sample.gamma=3", *chain)
    labels = torch.arange(64) % 10
    out = AR_METHOD.drafting.speculative(target, target, cfg.sample, labels, torch.Generator().manual_seed(0))
    st = out["stats"].as_dict()
    assert st["acceptance_rate"] == 1.0 and st["residual_tokens"] == 0
    assert bool((out["source"] == ACCEPTED).all())
    assert st["tokens_per_round"] == pytest.approx(4 / 2)  # 4 tokens, gamma 3: rounds of 3 and 1
    # the draft is the target, so its transformer is too: the target's passes serve both heads
    assert st["draft_passes"] == 0 and st["target_passes"] == 2 * 3
    settings = AR_METHOD.loop_settings(target, cfg.sample)
    own = generate_speculative(target, target, labels, settings, gamma=3, generator=torch.Generator().manual_seed(0),
                               verify=cfg.sample.verify, share_passes=False)
    st = own["stats"].as_dict()
    assert st["acceptance_rate"] == 1.0 and st["tokens_per_target_pass"] == pytest.approx(4 / 2)
    assert st["draft_passes"] == 2 * 3
    assert torch.allclose(own["latents"], out["latents"], atol=1e-4)  # sharing passes changes the cost, not the samples


@pytest.mark.parametrize("verify,chain,gamma", [("path", (), 3), ("step", (), 3), ("path", FINISHING, 3),
                                                ("step", FINISHING, 3), ("step", FINISHING, 1), ("path", (), 1)])
def test_speculative_samples_match_plain_sampling_of_the_target(verify, chain, gamma):
    """A different draft (acceptance well below 1): the target's tokens by speculative and by
    plain sampling are indistinguishable (two-sample KS on all 16 coordinates, Bonferroni),
    while the draft's own samples are not; for both verification modes, and for a chain that
    stops early and is finished by the target (the draft's own finishing never reaches the output);
    γ = 1 runs the token-by-token loop."""
    cfg, target = _net(1, f"sample.gamma={gamma}", f"sample.verify={verify}", *chain)
    draft = _near(target, 0.01, 2)
    n = 4000
    labels = torch.arange(n) % 10
    # seeds: the finishing variants draw from 10/20 (with 0/1, step mode's smallest of 16 p-values
    # was 4.6e-4, a 0.7 % event under the null; 16,000 samples of it gave 0.04: no bias)
    s_spec, s_plain = (10, 20) if chain else (0, 1)
    spec = AR_METHOD.drafting.speculative(target, draft, cfg.sample, labels, torch.Generator().manual_seed(s_spec))
    plain = AR_METHOD.generate(target, cfg.sample, labels, torch.Generator().manual_seed(s_plain))["latents"]
    other = AR_METHOD.generate(draft, cfg.sample, labels, torch.Generator().manual_seed(2))["latents"]
    rate = spec["stats"].as_dict()["acceptance_rate"]
    assert 0.05 < rate < 0.95

    def pvals(a, b):
        return [sps.ks_2samp(a.reshape(n, -1)[:, i].numpy(), b.reshape(n, -1)[:, i].numpy()).pvalue
                for i in range(16)]

    assert min(pvals(spec["latents"], plain)) > ALPHA / 16
    assert min(pvals(other, plain)) < ALPHA / 16


@pytest.mark.parametrize("verify,gamma", [("path", 4), ("step", 4), ("path", 1), ("step", 1)])
def test_every_token_comes_from_an_accepted_proposal_or_a_residual_sample(verify, gamma):
    """Rejections forced by a draft far from the target, one residual candidate per try:
    every output token is marked accepted or residual, the counts add up, and no token is the
    zero vector a fallback would leave."""
    cfg, target = _net(1, f"sample.gamma={gamma}", "sample.residual_batch=1", f"sample.verify={verify}")
    _, draft = _net(3)
    with torch.no_grad():
        for p in draft.head.final.parameters():
            p.mul_(4.0)
    labels = torch.arange(32) % 10
    out = AR_METHOD.drafting.speculative(target, draft, cfg.sample, labels, torch.Generator().manual_seed(0))
    st, src = out["stats"], out["source"]
    assert bool(((src == ACCEPTED) | (src == RESIDUAL)).all())
    assert st.residual_tokens > 0 and st.residual_rounds > 1
    assert int((src == ACCEPTED).sum()) == st.accepted and int((src == RESIDUAL).sum()) == st.residual_tokens
    assert st.accepted + st.residual_tokens == st.tokens == 32 * 4
    assert st.tested == st.accepted + st.residual_tokens  # one rejection per residual token
    tokens = target.tokens(out["latents"])
    assert bool((tokens.abs().sum(-1) > 0).all())


@pytest.mark.parametrize("gamma", [4, 1])
def test_path_residual_sampling_raises_instead_of_falling_back(gamma):
    cfg, target = _net(1)
    _, draft = _net(3)
    settings = AR_METHOD.loop_settings(target, cfg.sample)
    with pytest.raises(RuntimeError, match="residual sampling found no sample"):
        generate_speculative(target, draft, torch.arange(16) % 10, settings, gamma=gamma, verify="path",
                             generator=torch.Generator().manual_seed(0), max_residual_rounds=0)


@pytest.mark.parametrize("gamma", [4, 1])
def test_step_residual_beyond_its_rounds_is_drawn_exactly(gamma):
    """verify=step: a step residual that rejection does not find within its rounds is drawn by
    the exact inverse-CDF sampler (no rejection at all with 0 rounds), never left undrawn."""
    cfg, target = _net(1)
    _, draft = _net(3)
    settings = AR_METHOD.loop_settings(target, cfg.sample)
    out = generate_speculative(target, draft, torch.arange(16) % 10, settings, gamma=gamma, verify="step",
                               generator=torch.Generator().manual_seed(0), max_residual_rounds=0)
    stats = out["stats"].as_dict()
    assert stats["residual_inverse"] > 0 and stats["residual_candidates"] == 0
    assert bool(torch.isfinite(out["latents"]).all())


@pytest.mark.parametrize("w,a", [(0.6, 0.3), (0.05, 0.3), (1.0, 0.02)])
def test_inverse_residual_samples_the_exact_residual_across_and_along(w, a):
    """gaussian_residual_inverse, in 3-D with the means apart along a diagonal: the coordinate
    along e = (m_p − m_q)/|m_p − m_q| follows the closed-form residual CDF (KS), the two
    coordinates across e are N(0, s²) (KS), including residuals of tiny mass (w = 0.05, and
    means 0.04 std apart) where rejection from N(m_p) would need millions of candidates."""
    from ecar.engine.speculative_rules import gaussian_residual_inverse

    b, sd, n = -0.2, 0.5, 20_000
    e = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64) / 3
    base = torch.tensor([0.1, -0.3, 0.2], dtype=torch.float64)
    mp, mq = base + a * e, base + b * e
    y = gaussian_residual_inverse(mp.expand(n, 3), mq.expand(n, 3), torch.full((n,), sd, dtype=torch.float64),
                                  torch.full((n,), math.log(w), dtype=torch.float64), torch.Generator().manual_seed(0))
    along = ((y - base) @ e).numpy()
    c = (a + b) / 2 - sd**2 * math.log(w) / (a - b)

    def mass(z):
        return w * sps.norm.cdf((z - a) / sd) - sps.norm.cdf((z - b) / sd)

    def cdf(z):
        return (mass(np.maximum(z, c)) - mass(c)) / (w - 1 - mass(c))

    assert bool((along > c - 1e-9).all()) and sps.kstest(along, cdf).pvalue > ALPHA
    across = (y - base) - torch.from_numpy(along)[:, None] * e
    u = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64) / math.sqrt(5)  # two directions across e
    v = torch.linalg.cross(e, u)
    for direction in (u, v):
        assert sps.kstest((across @ direction).numpy() / sd, "norm").pvalue > ALPHA


@pytest.mark.parametrize("w", [1.0, 0.6])
def test_gaussian_residual_samples_the_residual_of_two_gaussians(w):
    """The step residual max(0, w·N(a, s²) − N(b, s²)), 1-D (w < 1: the weighted residual block
    verification draws from): KS against its exact CDF, the mass above z of
    w·Φ((z − a)/s) − Φ((z − b)/s) on z > c, where c = (a + b)/2 − s²·log w / (a − b) is the
    crossing point, for a > b."""
    from ecar.engine.speculative import SpeculativeStats, gaussian_residual

    a, b, sd, n = 0.3, -0.2, 0.5, 20_000
    log_w = torch.full((n,), math.log(w), dtype=torch.float64)
    y = gaussian_residual(torch.full((n, 1), a), torch.full((n, 1), b), torch.full((n,), sd), 16,
                          torch.Generator().manual_seed(0), 10_000, SpeculativeStats(), log_w)[:, 0].double()
    c = (a + b) / 2 - sd**2 * math.log(w) / (a - b)

    def mass(z):
        return w * sps.norm.cdf((z - a) / sd) - sps.norm.cdf((z - b) / sd)

    def cdf(z):
        return (mass(np.maximum(z, c)) - mass(c)) / (w - 1 - mass(c))

    assert bool((y > c).all()) and sps.kstest(y.numpy(), cdf).pvalue > ALPHA


def test_finishing_chain_feeds_its_state_and_outputs_the_targets_euler_step():
    """chain_end < 1: plain sampling conditions token i + 1 on the chain's state at t = end and
    outputs end-state + (1 − end)·v(end-state, end). Checked by replaying the generator's draws:
    token 0 by hand from the same noise, and the output differs from the chain's state."""
    from ecar.engine.causal import GuidedCausal, generate_causal
    from ecar.samplers.chain import power_grid

    cfg, target = _net(1, *FINISHING)
    settings = AR_METHOD.loop_settings(target, cfg.sample)
    chain = settings.chain()
    assert chain.finishes and torch.allclose(chain.grid(), power_grid(3, 2.0) * 0.8)
    labels = torch.arange(8) % 10
    out = generate_causal(target, labels, settings, torch.Generator().manual_seed(0))["latents"]
    g = torch.Generator().manual_seed(0)
    net = GuidedCausal(target, labels, settings.guidance, target.num_tokens)
    pos = torch.zeros(8, 1, dtype=torch.long)
    v = net.velocity(net.condition(torch.zeros(8, 1, target.token_dim), pos), pos)
    state = chain.sample(v, torch.randn((8, 1, target.token_dim), generator=g), g)[0]
    t = torch.full((8, 1), 0.8)
    token0 = state + 0.2 * v(state, t)
    assert torch.allclose(target.tokens(out)[:, 0], token0[:, 0], atol=1e-5)
    assert not torch.allclose(token0, state, atol=1e-3)


def test_power_grid_is_uniform_by_default_and_finer_near_the_end():
    from ecar.samplers.chain import power_grid

    assert torch.equal(power_grid(10), torch.linspace(0, 1, 11))
    g = power_grid(4, 2.0, 0.9)
    assert torch.allclose(g, torch.tensor([0.0, 0.39375, 0.675, 0.84375, 0.9]))
    assert bool((g[1:] - g[:-1]).diff().lt(0).all())  # steps shrink towards the data end


# --------------------------------------------------------------------------- trained tiny checkpoints

TRAINED_TINY = ["data.resolution=8", "model.patch=2", "model.depth=1", "model.heads=2", "model.head_depth=1",
                "train.batch_size=32", "train.warmup_steps=10", "train.log_every=50", "train.tensorboard=false",
                "train.sample_every=0", "train.ckpt_every=0", "train.device=cpu", "sample.steps=4",
                "sample.gamma=3"]
"""digits at its native 8×8 with patch 2: 16 tokens of 4 values; a one-block transformer and a
one-layer head, 4 chain steps per token. CPU, so the checkpoints are the same on every machine."""


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """(target, draft) loaded from two runs of ``ecar.train.trainer.train`` on digits (a few
    seconds each): the target is 32 wide (transformer and head) and trained 300 steps, the
    draft is 16 wide with another seed — the same data, method and token layout, so
    ``check_draft_pair`` accepts it."""
    root = tmp_path_factory.mktemp("speculative-trained")
    recipe = ROOT / "configs" / "digits_ar.yaml"
    runs = {"target": ["model.hidden=32", "model.head_width=32", "train.max_steps=300", "train.seed=0"],
            "draft": ["model.hidden=16", "model.head_width=16", "train.max_steps=300", "train.seed=1"]}
    loaded = []
    for name, over in runs.items():
        train(load_config(recipe, [*TRAINED_TINY, *over]), root / name, progress=False)
        loaded.append(load(root / name, "cpu"))
    target, draft = loaded
    check_draft_pair(target.cfg, draft.cfg)
    assert target.step == draft.step == 300 and target.model.num_tokens == 16
    return target, draft


def _image_statistics(latents: torch.Tensor, model) -> dict[str, np.ndarray]:
    """Per-image statistics of (N, 1, 8, 8) samples: single token coordinates at the start, the
    middle and the end of the raster order, the image's mean, spread and top-minus-bottom
    intensity, and its centre (the 2×2 middle pixels)."""
    tokens = model.tokens(latents)  # (N, 16, 4)
    flat = latents.flatten(1)
    h = latents.shape[-1] // 2
    out = {f"token{i}[{c}]": tokens[:, i, c] for i, c in ((0, 0), (3, 3), (5, 1), (9, 2), (10, 0), (15, 3))}
    out["mean"] = flat.mean(1)
    out["std"] = flat.std(1)
    out["top-bottom"] = latents[:, :, :h].flatten(1).mean(1) - latents[:, :, h:].flatten(1).mean(1)
    out["centre"] = latents[:, :, h - 1:h + 1, h - 1:h + 1].flatten(1).mean(1)
    return {k: v.double().numpy() for k, v in out.items()}


def _ks_pvalues(a: torch.Tensor, b: torch.Tensor, model) -> dict[str, float]:
    """Two-sample KS p-value of every statistic of :func:`_image_statistics`."""
    sa, sb = _image_statistics(a, model), _image_statistics(b, model)
    return {k: float(sps.ks_2samp(sa[k], sb[k]).pvalue) for k in sa}


@pytest.mark.parametrize("verify", ["path", "step"])
def test_trained_draft_equal_to_target_accepts_every_proposal(trained_pair, verify):
    target, _ = trained_pair
    sample = dataclasses.replace(target.cfg.sample, verify=verify)
    labels = torch.arange(200) % 10
    with torch.no_grad():
        out = AR_METHOD.drafting.speculative(target.model, target.model, sample, labels, torch.Generator().manual_seed(0))
    st = out["stats"].as_dict()
    assert st["acceptance_rate"] == 1.0 and st["residual_tokens"] == 0 and st["tokens"] == 200 * 16
    assert bool((out["source"] == ACCEPTED).all())
    assert bool(torch.isfinite(out["latents"]).all())


@pytest.mark.parametrize("verify,gamma", [("path", 3), ("step", 3), ("step", 1)])
def test_trained_speculative_samples_match_plain_sampling_of_the_target(trained_pair, verify, gamma):
    """The trained 16-wide draft (rejections at a fair rate): 4,000 images of the trained target
    by speculative and by plain sampling are indistinguishable by two-sample KS tests on ten
    per-image statistics (Bonferroni), while the same tests tell the draft's own samples from
    the target's."""
    target, draft = trained_pair
    sample = dataclasses.replace(target.cfg.sample, verify=verify, gamma=gamma)
    n = 4000
    labels = torch.arange(n) % 10
    with torch.no_grad():
        spec = AR_METHOD.drafting.speculative(target.model, draft.model, sample, labels, torch.Generator().manual_seed(0))
        plain = AR_METHOD.generate(target.model, sample, labels, torch.Generator().manual_seed(1))["latents"]
        other = AR_METHOD.generate(draft.model, sample, labels, torch.Generator().manual_seed(2))["latents"]
    st = spec["stats"].as_dict()
    assert 0.05 < st["acceptance_rate"] < 0.98 and st["residual_tokens"] > 0
    assert spec["latents"].shape == plain.shape == (n, 1, 8, 8)
    same = _ks_pvalues(spec["latents"], plain, target.model)
    level = ALPHA / len(same)
    assert len(same) >= 8
    assert min(same.values()) > level, same
    assert min(_ks_pvalues(other, plain, target.model).values()) < level  # the test has power on this pair
