"""Choosing γ per call: speculation only where it pays (issue 28; docs/speculative.md, "Choosing γ").

Whether speculative decoding beats plain decoding depends on the batch: at batch 1 on a CPU a
call's cost is mostly latency, so one verification call over γ·(K + 1) rows costs about what
one plain step costs, and the draft's cheap chain replaces K target steps; at large batches
calls are FLOP-bound, a verification row costs what a plain step's row costs, and the draft's
chain and the rounds' bookkeeping are pure overhead. So ``gamma="auto"`` measures, inside the
call, what each kind of call costs at the call's own batch size and the acceptance rate of the
pair, and picks γ ∈ {0 (plain), 1, …, ``max_gamma``} from the cost model below
(:func:`predicted_seconds`, :func:`choose_gamma`). The choice uses past draws only, so every
token still has the target's law (docs/speculative.md); the same seed with another choice
draws other samples of the same law, and ``gamma=G`` fixes the choice.

The model, per image batch of B images and N tokens, K chain steps, acceptance α per tested
token (a proposal kept whole):

* plain: N·(pass + target chain);
* γ = 1: N rounds of pass (+ the draft's pass) + draft chain + verify(1) + decide + P_rej·redo;
* γ ≥ 2: R(γ) rounds of γ·(pass (+ draft pass) + draft chain) (+ the target's pass over γ
  positions for a separate draft) + verify(γ) + decide + P_rej·redo, where a round gives an
  image T tokens, P(T = t) = α^{t−1}(1 − α) for t < γ and α^{γ−1} for t = γ, and R(γ) is
  the rounds the slowest of B images needs (a normal approximation of its progress);
* verify(M) = v₀ + v₁·B·M: a target head call of M proposals per image (K + 1 rows each, both
  guidance halves): a fixed latency plus a cost per proposal and image;
* redo (some image of the batch rejected, P_rej = 1 − α^{γ·B}): a Gaussian redraw, the draft's
  rest of a chain and one more target head call over the rejected images' rows, repeated
  about 1/√α times (the rest of a chain is rejected again with probability ~ 1 − √α).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from statistics import NormalDist

__all__ = ["MAX_GAMMA", "CallCosts", "GammaMemory", "choose_gamma", "predicted_seconds", "rounds_needed",
           "tokens_per_round"]

MAX_GAMMA = 6
"""The largest γ ``gamma="auto"`` considers (γ = 3–6 tied in the batch-1 benchmark)."""

MARGIN = 0.05
"""Speculation is chosen only where the model predicts it at least this much faster than plain
decoding: the model's error must not turn a predicted tie into a loss."""


@dataclass(frozen=True)
class CallCosts:
    """Seconds of each kind of call at the batch size of the call that measured them.

    pass_: one target transformer pass over one position; target_chain: the target head's
    chain for one token (its x-free terms, K steps, the finishing step); draft_pass: the
    draft's own pass (0 when it shares the target's); draft_chain: the draft head's recorded
    chain for one token; verify_fixed, verify_per_token: a verification head call costs
    verify_fixed + verify_per_token·B·M for M proposals per image; decide: the acceptance test
    and bookkeeping of one round; extra_position: for a separate draft, the target's
    verification pass per position after the first."""

    pass_: float
    target_chain: float
    draft_pass: float
    draft_chain: float
    verify_fixed: float
    verify_per_token: float
    decide: float
    extra_position: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GammaMemory:
    """What ``gamma="auto"`` learned in earlier calls of one drafted pipeline, so that only the
    first call at each batch size pays for the pilot (plain and γ = 1 decoding of the first
    tokens while the costs are timed and the acceptance counted).

    ``costs[(key, batch)]``: the :class:`CallCosts` the first pilot at that batch size measured;
    ``counts[key]``: ``[accepted, tested]`` proposals summed over every speculative call at
    settings ``key`` (the acceptance pooled over all of them: a pilot's 32 tested tokens give
    it only to about ±0.05). ``key`` names the sampling settings and the verification, since
    both change the acceptance. The γ of a later call is then a function of past draws only,
    so every token keeps the target's law (docs/speculative.md, "Choosing γ")."""

    costs: dict[tuple[str, int], CallCosts] = field(default_factory=dict)
    counts: dict[str, list[int]] = field(default_factory=dict)
    max_keys: int = 64
    """Settings remembered at most (a server whose users vary guidance freely): the oldest go."""

    def recall(self, key: str, batch: int) -> tuple[CallCosts, float] | None:
        """The costs at ``batch`` and the pooled acceptance at ``key``, once a pilot at this batch
        size measured the costs (it tested proposals too)."""
        costs, (accepted, tested) = self.costs.get((key, batch)), self.counts.get(key, [0, 0])
        if costs is None or not tested:
            return None
        return costs, accepted / tested

    def learn(self, key: str, batch: int, accepted: int, tested: int, costs: CallCosts | None = None) -> None:
        """Add a call's tested and accepted proposals (and a pilot's costs, kept per batch size)."""
        count = self.counts.setdefault(key, [0, 0])
        count[0], count[1] = count[0] + accepted, count[1] + tested
        if costs is not None:
            self.costs.setdefault((key, batch), costs)
        while len(self.counts) > self.max_keys:
            old = next(iter(self.counts))
            del self.counts[old]
            self.costs = {k: v for k, v in self.costs.items() if k[0] != old}


def tokens_per_round(alpha: float, gamma: int) -> tuple[float, float]:
    """Mean and variance of the tokens an image gains in a round of γ proposals at acceptance α."""
    probs = [alpha ** (t - 1) * (1 - alpha) for t in range(1, gamma)] + [alpha ** (gamma - 1)]
    mean = sum(t * p for t, p in enumerate(probs, start=1))
    return mean, max(0.0, sum(t * t * p for t, p in enumerate(probs, start=1)) - mean * mean)


def rounds_needed(alpha: float, gamma: int, batch: int, tokens: int) -> float:
    """Rounds until the slowest of ``batch`` images has ``tokens`` tokens: R with
    R·E − z·√(R·V) = tokens (E, V of :func:`tokens_per_round`, z the normal quantile of the
    largest of ``batch`` draws), at least tokens / γ and at most ``tokens``."""
    if gamma == 1 or tokens == 0:
        return float(tokens)
    mean, var = tokens_per_round(alpha, gamma)
    z = NormalDist().inv_cdf(batch / (batch + 1.0)) if batch > 1 else 0.0
    z = max(z, 0.0)
    root = (z * math.sqrt(var) + math.sqrt(z * z * var + 4 * mean * tokens)) / (2 * mean)
    return min(float(tokens), max(tokens / gamma, root * root))


def predicted_seconds(costs: CallCosts, gamma: int, alpha: float, batch: int, tokens: int) -> float:
    """Predicted seconds for ``tokens`` more tokens of a batch of ``batch`` images at γ (0: plain)."""
    if gamma == 0:
        return tokens * (costs.pass_ + costs.target_chain)
    if not 0 <= alpha <= 1:
        raise ValueError(f"acceptance must be in [0, 1], got {alpha}")
    verify = costs.verify_fixed + costs.verify_per_token * batch * gamma
    passes = gamma * (costs.pass_ + costs.draft_pass) + (gamma - 1) * costs.extra_position
    kept = alpha ** gamma  # an image's whole block kept
    p_redo = 1 - kept ** batch
    # a redo continues the cut token's chain, about half of it, kept whole with probability ~ √α: repeated
    # until kept, about 1/√α times (at most 10)
    repeats = min(10.0, 1 / math.sqrt(max(alpha, 1e-2)))
    redo = repeats * (0.5 * costs.draft_chain + costs.verify_fixed + costs.verify_per_token * batch * (1 - kept)
                      + costs.decide)
    per_round = passes + gamma * costs.draft_chain + verify + costs.decide + p_redo * redo
    return rounds_needed(alpha, gamma, batch, tokens) * per_round


def choose_gamma(costs: CallCosts, alpha: float, batch: int, tokens: int, max_gamma: int = MAX_GAMMA,
                 margin: float = MARGIN) -> tuple[int, dict[int, float]]:
    """The γ ∈ {0, …, max_gamma} with the fewest predicted seconds (:func:`predicted_seconds`),
    and every prediction; speculation only where it beats plain by ``margin``."""
    if batch < 1 or tokens < 0 or max_gamma < 0:
        raise ValueError(f"choose_gamma: batch >= 1, tokens >= 0, max_gamma >= 0; got {batch}, {tokens}, {max_gamma}")
    pred = {g: predicted_seconds(costs, g, alpha, batch, tokens) for g in range(max_gamma + 1)}
    best = min(range(1, max_gamma + 1), key=pred.__getitem__, default=0)
    if best and pred[best] * (1 + margin) <= pred[0]:
        return best, pred
    return 0, pred
