"""The exact law of speculative decoding at engine level (issue 28, part 4): with an affine
head the target's law is a known Gaussian (tests/speculative_law.py); 10^5 images drawn by
the real engine, with a draft head on the target's transformer and with a separate draft,
in blocks that cross token boundaries, pass the check. tests/plant_wrong_rules.py runs the same
check on copies of the engine with wrong rules planted; each is caught
(benchmarks/results/speculative_planted_rules.json)."""

from __future__ import annotations

import pytest

from ecar.engine.speculative import generate_speculative
from speculative_law import THRESHOLD_P, draw, exact_law, law_pvalue, pair


@pytest.mark.parametrize("shared,gamma", [(True, 3), (False, 2)])
def test_speculative_draws_have_the_exact_gaussian_law(shared, gamma):
    mean, cov = exact_law(pair(True)[0])
    samples, stats = draw(generate_speculative, shared, gamma, 100_000, seed=0)
    assert 0.4 < stats.as_dict()["acceptance_rate"] < 0.9  # rejections and residual draws happen
    p, tests = law_pvalue(samples, mean, cov)
    assert p > THRESHOLD_P, tests


def test_the_check_sees_the_wrong_law():
    """The target's plain chain (gamma 0) passes; the draft's law is rejected by the same check."""
    target, draft = pair(True)
    mean, cov = exact_law(target)
    samples, _ = draw(generate_speculative, True, 0, 100_000, seed=1)  # gamma 0: the target's own chain
    assert law_pvalue(samples, mean, cov)[0] > THRESHOLD_P
    d_mean, d_cov = exact_law(draft)
    assert law_pvalue(samples, d_mean, d_cov)[0] < THRESHOLD_P
