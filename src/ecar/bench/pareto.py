"""Quality–cost frontiers and equal-quality cost ratios (pure functions, no torch).

A *point* is one sampler setting of one model: its cost per image (GFLOPs or seconds) and
its FID (mean over sampling seeds, lower is better). The questions a benchmark must answer
honestly are about the best a model can do at a given cost, so everything here works on a
model's **Pareto frontier**: the points that no other point of the same model beats on both
cost and FID.

Equal-quality cost ratio
------------------------
``equal_quality_ratio(method_point, baseline_points)`` asks: how much must the baseline
spend to reach the method's FID? Along the baseline's frontier FID falls as cost grows; the
cost at FID ``f`` is interpolated **linearly in (log cost, FID)** between the two frontier
points whose FIDs bracket ``f`` (log cost because step counts and costs grow
geometrically). The ratio is that cost divided by the method's cost (> 1: the method is
cheaper at equal quality). Nothing is extrapolated:

* the baseline never gets as good as ``f`` (all its frontier FIDs are worse): it needs more
  than its most expensive frontier point, and the ratio is reported as a lower bound,
  ``bound=">"``, with value ``cost(best baseline point) / method cost``;
* the baseline's cheapest point is already better than ``f``: it needs less than that
  point's cost, and the ratio is an upper bound, ``bound="<"``.

``fid_at_cost(points, cost)`` is the converse lookup used to ask whether a model is
dominated: the FID the other model's frontier reaches at a given cost (interpolated the
same way; ``None`` below its cheapest point, its best FID above its most expensive one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = ["Point", "EqualQuality", "pareto_frontier", "cost_at_fid", "fid_at_cost",
           "equal_quality_ratio"]


@dataclass(frozen=True)
class Point:
    """One sampler setting: ``cost`` per image (> 0), ``fid`` (lower is better)."""

    cost: float
    fid: float
    label: str = ""


@dataclass(frozen=True)
class EqualQuality:
    """Result of :func:`equal_quality_ratio`.

    ``ratio``: baseline cost at the method's FID ÷ the method's cost (or the bound's value);
    ``bound``: ``None`` (interpolated), ``">"`` (the baseline never reaches the FID: the
    true ratio is larger) or ``"<"`` (the baseline is better even at its cheapest point:
    the true ratio is smaller); ``baseline_cost``: the interpolated (or bounding) cost.
    """

    ratio: float
    bound: str | None
    baseline_cost: float
    method_cost: float
    method_fid: float

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "bound": self.bound, "baseline_cost": self.baseline_cost,
                "method_cost": self.method_cost, "method_fid": self.method_fid}


def _valid(points: Iterable[Point]) -> list[Point]:
    out = [p for p in points
           if math.isfinite(p.cost) and p.cost > 0 and math.isfinite(p.fid)]
    return out


def pareto_frontier(points: Iterable[Point]) -> list[Point]:
    """The non-dominated points, sorted by increasing cost (and so decreasing FID).

    A point is kept iff every cheaper-or-equal-cost point has a strictly worse FID. Points
    with a non-finite or non-positive cost or a non-finite FID are ignored.
    """
    pts = sorted(_valid(points), key=lambda p: (p.cost, p.fid))
    front: list[Point] = []
    for p in pts:
        if not front or p.fid < front[-1].fid:
            if front and p.cost == front[-1].cost:
                continue  # same cost, worse or equal FID was sorted after the better one
            front.append(p)
    return front


def _interp_log(c0: float, c1: float, f0: float, f1: float, f: float) -> float:
    """Cost at FID ``f`` on the segment (c0, f0)–(c1, f1), linear in (log cost, FID)."""
    if f0 == f1:
        return c0
    w = (f0 - f) / (f0 - f1)
    return math.exp(math.log(c0) + w * (math.log(c1) - math.log(c0)))


def cost_at_fid(points: Iterable[Point], fid: float) -> tuple[float, str | None]:
    """Cost the frontier of ``points`` needs to reach ``fid``.

    Returns ``(cost, None)`` when interpolated; ``(cost of the best point, ">")`` when the
    frontier never gets that good; ``(cost of the cheapest point, "<")`` when even the
    cheapest point is better than ``fid``.
    """
    front = pareto_frontier(points)
    if not front:
        raise ValueError("no valid (cost > 0, finite FID) point to build a frontier from")
    if fid < front[-1].fid:
        return front[-1].cost, ">"
    if fid > front[0].fid:
        return front[0].cost, "<"
    for a, b in zip(front, front[1:]):
        if b.fid <= fid <= a.fid:
            return _interp_log(a.cost, b.cost, a.fid, b.fid, fid), None
    return front[0].cost, None  # a one-point frontier whose FID equals ``fid``


def fid_at_cost(points: Iterable[Point], cost: float) -> float | None:
    """Best FID the frontier of ``points`` reaches at ``cost`` (interpolated in log cost).

    ``None`` when ``cost`` is below the frontier's cheapest point (the model cannot sample
    that cheaply with the measured settings); the best FID when above its dearest one.
    """
    front = pareto_frontier(points)
    if not front or cost < front[0].cost:
        return None
    if cost >= front[-1].cost:
        return front[-1].fid
    for a, b in zip(front, front[1:]):
        if a.cost <= cost <= b.cost:
            w = (math.log(cost) - math.log(a.cost)) / (math.log(b.cost) - math.log(a.cost))
            return a.fid + w * (b.fid - a.fid)
    return front[-1].fid


def equal_quality_ratio(method: Point, baseline: Sequence[Point]) -> EqualQuality:
    """Baseline cost at the method's FID ÷ the method's cost (module docstring)."""
    if not (math.isfinite(method.cost) and method.cost > 0 and math.isfinite(method.fid)):
        raise ValueError(f"the method's point needs cost > 0 and a finite FID, got {method}")
    cost, bound = cost_at_fid(baseline, method.fid)
    return EqualQuality(ratio=cost / method.cost, bound=bound, baseline_cost=cost,
                        method_cost=method.cost, method_fid=method.fid)
