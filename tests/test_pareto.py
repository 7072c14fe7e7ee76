"""Frontier arithmetic of the bench: Pareto frontier, equal-quality ratio and its bounds."""

from __future__ import annotations

import math

import pytest

from ecar.bench.report import summarize
from ecar.bench.pareto import Point, cost_at_fid, equal_quality_ratio, fid_at_cost, pareto_frontier

# A baseline whose FID falls as it spends more: (cost, fid)
BASE = [Point(1.0, 10.0, "a"), Point(2.0, 6.0, "b"), Point(4.0, 3.0, "c"), Point(8.0, 2.0, "d"),
        # dominated points: dearer and worse than "c"; same cost as "b" but worse
        Point(6.0, 3.5, "x"), Point(2.0, 7.0, "y")]


def test_frontier_keeps_only_non_dominated_points_in_cost_order():
    front = pareto_frontier(BASE + [Point(float("nan"), 1.0), Point(0.0, 0.5), Point(3.0, math.inf)])
    assert [p.label for p in front] == ["a", "b", "c", "d"]
    assert all(p.fid > q.fid and p.cost < q.cost for p, q in zip(front, front[1:]))


def test_cost_at_fid_interpolates_in_log_cost():
    # FID 4.5 lies halfway between b (2, 6) and c (4, 3): cost = 2 * 2**0.5 (log-midpoint)
    cost, bound = cost_at_fid(BASE, 4.5)
    assert bound is None and cost == pytest.approx(2 * 2**0.5, rel=1e-12)
    # exactly on a frontier point
    assert cost_at_fid(BASE, 3.0) == (pytest.approx(4.0), None)
    # the dominated point x (6, 3.5) does not make FID 3.5 cost 6
    assert cost_at_fid(BASE, 3.5)[0] < 4.0


def test_bounds_instead_of_extrapolation():
    # better than the baseline ever gets: it would need more than its best point's cost
    cost, bound = cost_at_fid(BASE, 1.0)
    assert (cost, bound) == (8.0, ">")
    # worse than the baseline's cheapest point: it needs less than that point's cost
    cost, bound = cost_at_fid(BASE, 12.0)
    assert (cost, bound) == (1.0, "<")


def test_equal_quality_ratio_and_its_bounds():
    r = equal_quality_ratio(Point(0.5, 4.5), BASE)
    assert r.bound is None and r.ratio == pytest.approx(2 * 2**0.5 / 0.5)
    r = equal_quality_ratio(Point(0.25, 1.5), BASE)
    assert r.bound == ">" and r.ratio == pytest.approx(8.0 / 0.25)
    r = equal_quality_ratio(Point(2.0, 11.0), BASE)
    assert r.bound == "<" and r.ratio == pytest.approx(0.5)
    with pytest.raises(ValueError):
        equal_quality_ratio(Point(0.0, 1.0), BASE)
    with pytest.raises(ValueError, match="no valid"):
        cost_at_fid([Point(-1.0, 2.0)], 1.0)


def test_fid_at_cost():
    assert fid_at_cost(BASE, 0.5) is None  # cannot sample that cheaply
    assert fid_at_cost(BASE, 100.0) == 2.0  # best FID beyond the dearest point
    assert fid_at_cost(BASE, 2 * 2**0.5) == pytest.approx(4.5)
    assert fid_at_cost(BASE, 6.0) < 3.0  # the frontier, not the dominated point x


def _row(name, setting, g, s, fid, std):
    return {"name": name, "setting": setting, "steps": 1, "sampler": "euler", "fid_mean": fid,
            "fid_std": std, "gflops_per_image": g, "seconds_per_image": s}


def test_summary_headline_and_dominance_verdict():
    rows = [_row("dit", "shipped", 8.0, 0.8, 2.0, 0.05),
            _row("dit", "s1", 1.0, 0.1, 10.0, 0.1), _row("dit", "s2", 2.0, 0.2, 6.0, 0.1),
            _row("dit", "s3", 4.0, 0.4, 3.0, 0.1),
            _row("ecar", "shipped", 0.5, 0.1, 4.5, 0.1), _row("ecar", "s1", 0.25, 0.05, 9.0, 0.2),
            _row("flowar", "shipped", 0.4, 0.1, 8.0, 0.1), _row("flowar", "s1", 1.0, 0.2, 4.0, 0.1)]
    summary = summarize(rows)
    eq = summary["ecar"]["equal_quality_vs_dit"]
    assert eq["bound"] is None and eq["gflops_ratio"] == pytest.approx(2 * 2**0.5 / 0.5)
    # seconds follow the same frontier here (0.1 s per GFLOP for dit): 0.2828 s / 0.1 s
    assert eq["seconds_ratio"] == pytest.approx(0.2 * 2**0.5 / 0.1)
    assert summary["ecar"]["frontier_gflops"] == ["s1", "shipped"]
    # FlowAR at ecar's shipped 0.5 GFLOPs: log-interpolated between (0.4, 8) and (1, 4)
    cmp = summary["ecar"]["at_shipped_cost_vs_flowar"]
    w = math.log(0.5 / 0.4) / math.log(1.0 / 0.4)
    assert cmp["other_fid"] == pytest.approx(8.0 - 4.0 * w)
    assert cmp["verdict"] == "method better"
    # DiT cannot sample as cheaply as 0.5 GFLOPs
    assert summary["ecar"]["at_shipped_cost_vs_dit"]["verdict"] == "other cannot sample this cheaply"
    # a difference inside the seed spread is a tie
    rows[-1]["fid_mean"] = 4.6
    rows[-1]["fid_std"] = 0.5
    rows[-2]["fid_mean"] = 4.62
    assert summarize(rows)["ecar"]["at_shipped_cost_vs_flowar"]["verdict"] == "tie"
    # the baseline is better than DiT's best? bounds reach the summary too
    assert summary["dit"]["equal_quality_vs_ecar"]["bound"] == ">"
