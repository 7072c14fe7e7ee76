"""Cost anatomy: a sampling call's FLOPs split by unit and by part (backbone, head, guidance).

The parts must add up to the FLOPs counted for the whole call, the head's share must be what
the head's own calls count, and the guidance share what the null-label branch adds.
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.eval.cost import PARTS, cost_anatomy, count_flops, measure_cost
from ecar.methods import method_of
from ecar.autoencoders import IdentityAutoencoder
from ecar.pipeline import Pipeline


def _pipe(model, cfg):
    """The pipeline of an in-memory network (its cost is measured in latent space)."""
    return Pipeline(model, cfg, IdentityAutoencoder(1))


def _model(name, *over, size=16):
    cfg = load_config(None, [f"model.name={name}", *over])
    cfg.data.num_classes = 10
    model, _ = build_model(cfg, LatentSpec(1, size, 10))
    return cfg, model.eval()


@pytest.mark.parametrize("name", ["dit-tiny", "ecar-tiny", "flowar-tiny", "mar-tiny", "ar-tiny", "xar-tiny"])
def test_parts_sum_to_the_whole_call(name):
    cfg, model = _model(name, "model.patch=4", size=8)  # 2×2 tokens: the split, not the sampler, is tested
    s = dataclasses.replace(cfg.sample, cfg=2.0, steps=2)  # few steps: the split, not the sampler, is tested
    a = cost_anatomy(_pipe(model, cfg), s, batch=2)
    whole = count_flops(_pipe(model, cfg), s, batch=2)
    assert whole > 0
    assert a.total == pytest.approx(whole, rel=1e-12)
    assert sum(u[p] for u in a.units for p in PARTS) == pytest.approx(whole, rel=1e-9)
    assert all(u[p] >= 0 for u in a.units for p in PARTS)
    assert a.part("guidance") > 0  # cfg 2 doubles rows somewhere
    plain = cost_anatomy(_pipe(model, cfg), dataclasses.replace(s, cfg=1.0), batch=2)
    assert plain.part("guidance") == 0
    assert plain.total == pytest.approx(a.total - a.part("guidance"), rel=1e-9)
    if name in ("dit-tiny", "xar-tiny"):  # one network, no head: all of it is the backbone
        assert a.part("head") == 0
        assert len(a.units) == 1 or name == "xar-tiny"
    else:
        assert a.part("head") > 0 and a.part("backbone") > 0


@pytest.mark.parametrize("over", [[], ["model.ar_input=parent", "model.head_cond=stage", "model.head=transformer"]])
def test_ecar_units_are_stages_and_the_head_share_is_the_heads_own_count(over):
    cfg, model = _model("ecar-tiny", "model.patch=4", *over)
    steps = [2, 3, 4]
    s = dataclasses.replace(cfg.sample, stage_steps=steps, cfg=1.0)
    a = cost_anatomy(_pipe(model, cfg), s, batch=2)
    assert len(a.units) == model.num_stages == 3
    # the last stage's head: one projection of its conditions and K head calls, counted directly
    last, g = model.num_stages - 1, model.grids[-1]
    z = torch.zeros(2, g * g, cfg.model.hidden)
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        zc = model.head_condition(z)
        for _ in range(steps[-1]):
            model.velocity(torch.zeros(2, g * g, model.token_dim), torch.zeros(2), zc, last)
    assert a.units[-1]["head"] == pytest.approx(c.get_total_flops() / 2 / 1e9, rel=1e-9)


def test_guidance_share_follows_the_guided_stages():
    cfg, model = _model("ecar-tiny", "model.patch=4")
    base = dataclasses.replace(cfg.sample, stage_steps=[2, 2, 2], cfg=2.0, cfg_schedule="constant")
    every = cost_anatomy(_pipe(model, cfg), dataclasses.replace(base, cfg_interval=[0.0, 1.0]), batch=2)
    coarse = cost_anatomy(_pipe(model, cfg), dataclasses.replace(base, cfg_interval=[0.0, 0.7]), batch=2)
    for u in every.units:  # guiding a unit doubles its rows: the null branch costs what the rest does
        assert u["guidance"] == pytest.approx(u["backbone"] + u["head"], rel=1e-6)
    assert coarse.units[-1]["guidance"] == 0 and coarse.units[0]["guidance"] > 0
    # measure_cost(anatomy=True): the bench's one call; its FLOPs are the anatomy's total
    s = dataclasses.replace(base, cfg_interval=[0.0, 0.7])
    cost = measure_cost(_pipe(model, cfg), s, batch=2, repeats=1, warmup=0, anatomy=True)
    assert cost.anatomy.units == coarse.units
    assert cost.gflops_per_image == cost.anatomy.total == pytest.approx(count_flops(_pipe(model, cfg), s, batch=2), rel=1e-12)
    assert measure_cost(_pipe(model, cfg), s, batch=2, repeats=1, warmup=0).anatomy is None
    assert method_of(cfg.model).name == "ecar"
