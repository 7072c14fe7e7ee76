"""FLOP counting and timing of whole sampling calls."""

import dataclasses

import pytest
import torch

from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.eval.cost import count_flops, measure_cost


def _model(name, **over):
    cfg = load_config(None, [f"model.name={name}"] + [f"{k}={v}" for k, v in over.items()])
    cfg.data.num_classes = 10
    model, _ = build_model(cfg, LatentSpec(1, 16, 10))
    return cfg, model.eval()


def test_dit_flops_scale_with_steps_and_guidance():
    cfg, model = _model("dit-tiny", **{"model.patch": 4})
    s = dataclasses.replace(cfg.sample, steps=4, cfg=1.0)
    f4 = count_flops(model, cfg, s, batch=2)
    f8 = count_flops(model, cfg, dataclasses.replace(s, steps=8), batch=2)
    f8g = count_flops(model, cfg, dataclasses.replace(s, steps=8, cfg=2.0), batch=2)
    assert f4 > 0
    assert f8 == pytest.approx(2 * f4, rel=1e-6)
    assert f8g == pytest.approx(2 * f8, rel=1e-6)  # guidance doubles every evaluation


def test_ecar_flops_grow_with_stage_steps_and_time_is_positive():
    cfg, model = _model("ecar-tiny", **{"model.patch": 4})
    s = dataclasses.replace(cfg.sample, stage_steps=[2, 2, 2], cfg=1.0)
    small = count_flops(model, cfg, s, batch=2)
    big = count_flops(model, cfg, dataclasses.replace(s, stage_steps=[2, 2, 8]), batch=2)
    assert big > small > 0
    cost = measure_cost(model, cfg, s, batch=4, repeats=2, warmup=1)
    assert cost.seconds_per_image > 0 and cost.gflops_per_image == pytest.approx(small, rel=1e-6)
