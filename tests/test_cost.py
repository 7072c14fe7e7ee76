"""FLOP counting and timing of whole sampling calls.

The FLOP tests compare PyTorch's counter (with :mod:`ecar.flops` registered through
``ecar.eval.cost``) against formulas written here from the architecture. Conventions: a
linear layer of fan-in a and fan-out b costs 2·a·b per row (bias, norms, activations and
other elementwise work are not counted); attention costs 2·N_q·N_k·D for Q·Kᵀ plus the same
for weights·V per image (D = heads·head_dim), whatever the mask.
"""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar import flops as ecar_flops
from ecar.eval.cost import (
    TIMING_BATCH,
    TIMING_REPEATS,
    TIMING_WARMUP,
    count_flops,
    measure_cost,
    time_sampling,
)
from ecar.layers import AdaLNBlock, KVCache
from ecar.autoencoders import IdentityAutoencoder
from ecar.pipeline import Pipeline


def _pipe(model, cfg):
    """The pipeline of an in-memory network (its cost is measured in latent space)."""
    return Pipeline(model, cfg, IdentityAutoencoder(1))

ROOT = Path(__file__).resolve().parents[1]
aten = torch.ops.aten


def _model(name, **over):
    cfg = load_config(None, [f"model.name={name}"] + [f"{k}={v}" for k, v in over.items()])
    cfg.data.num_classes = 10
    model, _ = build_model(cfg, LatentSpec(1, 16, 10))
    return cfg, model.eval()


def _count(fn):
    """(total FLOPs, FLOPs of attention ops) of ``fn()`` under FlopCounterMode."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    per_op = counter.get_flop_counts()["Global"]
    attn = sum(v for op, v in per_op.items() if "attention" in str(op))
    return counter.get_total_flops(), attn


# ---------------------------------------------------------------- analytic formulas

def linear(rows, fan_in, fan_out):
    return 2 * rows * fan_in * fan_out


def attention(batch, n_q, n_k, dim):
    return 2 * batch * n_q * n_k * dim + 2 * batch * n_q * n_k * dim


def adaln_block(batch, n_q, n_k, dim, mlp_hidden, cond_rows):
    """AdaLNBlock: adaLN Linear(D, 6D) on ``cond_rows`` condition rows, qkv Linear(D, 3D),
    attention, out projection Linear(D, D), MLP Linear(D, M) + Linear(M, D)."""
    rows = batch * n_q
    return (
        linear(cond_rows, dim, 6 * dim)
        + linear(rows, dim, 3 * dim)
        + attention(batch, n_q, n_k, dim)
        + linear(rows, dim, dim)
        + linear(rows, dim, mlp_hidden) + linear(rows, mlp_hidden, dim)
    )


def dit_forward(batch, tokens, token_dim, dim, depth, mlp_hidden, freq_dim=256):
    """DiT: patch embedding Linear(C·p², D); timestep MLP Linear(256, D) + Linear(D, D); label
    table lookup (no FLOPs); ``depth`` AdaLNBlocks with one condition row per image; final
    layer adaLN Linear(D, 2D) + Linear(D, C·p²)."""
    return (
        linear(batch * tokens, token_dim, dim)
        + linear(batch, freq_dim, dim) + linear(batch, dim, dim)
        + depth * adaln_block(batch, tokens, tokens, dim, mlp_hidden, cond_rows=batch)
        + linear(batch, dim, 2 * dim) + linear(batch * tokens, dim, token_dim)
    )


# ---------------------------------------------------------------- the SDPA kernels themselves

@pytest.mark.parametrize("case", ["plain", "bool_mask", "kv_cache", "gqa"])
def test_cpu_attention_counts_like_the_math_kernel(case):
    """The kernel CPU SDPA runs (flash for CPU) counts what the decomposed math kernel counts."""
    g = torch.Generator().manual_seed(0)
    b, h, n_q, d = 2, 4, 9, 16
    n_k = 13 if case == "kv_cache" else n_q
    h_kv = 2 if case == "gqa" else h
    q = torch.randn(b, h, n_q, d, generator=g)
    k, v = (torch.randn(b, h_kv, n_k, d, generator=g) for _ in range(2))
    kw = {"enable_gqa": True} if case == "gqa" else {}
    if case == "bool_mask":
        kw["attn_mask"] = torch.ones(n_q, n_k, dtype=torch.bool).tril()

    with torch.no_grad(), FlopCounterMode(display=False) as fast:
        F.scaled_dot_product_attention(q, k, v, **kw)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math:
        F.scaled_dot_product_attention(q, k, v, **kw)
    expected = 4 * b * h * n_q * n_k * d  # H = query heads; the mask does not reduce it
    per_op = fast.get_flop_counts()["Global"]
    assert per_op.get(aten._scaled_dot_product_flash_attention_for_cpu) == expected
    assert fast.get_total_flops() == math.get_total_flops() == expected


def test_cpu_attention_matches_torchs_cuda_formulas_forward_and_backward():
    """Same convention as the formulas torch ships for the CUDA flash kernel."""
    b, h, n_q, n_k, d = 2, 3, 5, 7, 8
    q = torch.empty(b, h, n_q, d, device="meta")
    k, v = torch.empty(b, h, n_k, d, device="meta"), torch.empty(b, h, n_k, d, device="meta")
    mask = torch.ones(n_q, n_k, dtype=torch.bool, device="meta")
    with FlopCounterMode(display=False) as cuda_kernel:
        aten._scaled_dot_product_flash_attention(q, k, v)  # meta kernel: CUDA op, shapes only
    with FlopCounterMode(display=False) as cpu_kernel:
        aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)
    assert cpu_kernel.get_total_flops() == cuda_kernel.get_total_flops() == 4 * b * h * n_q * n_k * d

    # backward on real CPU tensors, against torch's formula for the CUDA flash backward
    qr = torch.randn(b, h, n_q, d, requires_grad=True)
    kr, vr = torch.randn(b, h, n_k, d), torch.randn(b, h, n_k, d)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(qr, kr, vr).sum().backward()
    per_op = counter.get_flop_counts()["Global"]
    bwd = per_op[aten._scaled_dot_product_flash_attention_for_cpu_backward]
    torch_cuda_bwd = flop_counter.flop_registry[aten._scaled_dot_product_flash_attention_backward]
    assert bwd == torch_cuda_bwd(torch.empty(b, h, n_q, d), qr, kr, vr, out_val=None)
    assert bwd == 2 * b * h * n_q * n_k * (3 * d + 2 * d)


def test_registration_covers_the_cpu_kernel_without_double_counting():
    for name in ("_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_flash_attention_for_cpu_backward"):
        assert getattr(aten, name) in flop_counter.flop_registry
    # we register only what had no formula: the CUDA kernels keep torch's own
    for name in ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_flash_attention_backward"):
        assert flop_counter.flop_registry[getattr(aten, name)].__module__ == "torch.utils.flop_counter"
    for name in ecar_flops.REGISTERED:
        assert flop_counter.flop_registry[getattr(aten, name)].__module__ == "ecar.flops"


# ---------------------------------------------------------------- one block, one DiT forward

@pytest.mark.parametrize("case", ["plain", "block_causal_mask", "kv_cache", "per_token_condition"])
def test_adaln_block_flops_match_the_analytic_formula(case):
    torch.manual_seed(0)
    b, n, dim, heads, cached = 3, 17, 64, 4, 0
    block = AdaLNBlock(dim, heads, mlp_ratio=4.0).eval()
    x = torch.randn(b, n, dim)
    c = torch.randn(b, n, dim) if case == "per_token_condition" else torch.randn(b, dim)
    mask, cache = None, None
    if case == "block_causal_mask":
        stage = torch.tensor([0] * 5 + [1] * 12)
        mask = stage[None, :] <= stage[:, None]
    if case == "kv_cache":
        cache, cached = KVCache(), 6
        cache.extend(torch.randn(b, heads, cached, dim // heads), torch.randn(b, heads, cached, dim // heads))
    total, attn = _count(lambda: block(x, c, mask=mask, cache=cache))
    cond_rows = b * n if case == "per_token_condition" else b
    expected = adaln_block(b, n, n + cached, dim, 4 * dim, cond_rows)
    assert attn == attention(b, n, n + cached, dim)
    assert total == pytest.approx(expected, rel=0.01)
    assert total == expected  # the formula is exact: nothing counted twice, nothing missed


def test_dit_forward_flops_match_the_analytic_formula_and_pinned_number():
    cfg, model = _model("dit-tiny", **{"model.patch": 4})
    m = cfg.model
    b, p = 2, m.patch
    x, t, y = torch.randn(b, 1, 16, 16), torch.rand(b), torch.tensor([3, 7])
    total, attn = _count(lambda: model(x, t, y))
    tokens = (16 // p) ** 2
    expected = dit_forward(b, tokens, 1 * p * p, m.hidden, m.depth, int(m.hidden * m.mlp_ratio))
    assert total == pytest.approx(expected, rel=0.01)
    assert total == expected
    assert attn == m.depth * attention(b, tokens, tokens, m.hidden) == 262_144
    # pinned: dit-tiny (D=64, depth 2, MLP 256), 16x16x1 input, patch 4 (16 tokens), batch 2.
    # Without attention it would be 6_733_824: attention is 3.7 %, well outside the 1 %.
    assert total == 6_995_968


# ---------------------------------------------------------------- whole sampling calls

@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_ecar_sampling_counts_attention_of_every_stage(head):
    """Attention of a guided E-CAR sampling call: AR transformer once per stage on the
    doubled batch with a KV cache (stage s: N_q = g_s², N_k = 1 + Σ_{j≤s} g_j², the class
    token with stage 1), plus the transformer head's stage-local attention per step."""
    cfg, model = _model("ecar-tiny", **{"model.patch": 4, "model.head": head})
    m = cfg.model
    steps = [2, 3, 4]
    s = dataclasses.replace(cfg.sample, sampler="euler", stage_steps=steps, cfg=2.0, cfg_schedule="constant")
    b = 2
    run = _pipe(model, cfg).latent_call(s, b)
    total, attn = _count(lambda: run(0))

    grids = model.grids
    assert grids == [1, 2, 4]
    expected, seen = 0, 1  # class token
    for g, k in zip(grids, steps):
        n_q = g * g + (1 if seen == 1 else 0)
        seen += g * g
        expected += m.depth * attention(2 * b, n_q, seen, m.hidden)
        if head == "transformer":
            expected += k * m.head_depth * attention(2 * b, g * g, g * g, m.head_width)
    assert attn == expected > 0
    pinned = {"mlp": 778_240, "transformer": 2_977_792}[head]
    assert attn == pinned
    assert count_flops(_pipe(model, cfg), s, batch=b) == pytest.approx(total / b / 1e9, rel=1e-12)


@pytest.mark.parametrize("name", ["dit-tiny", "ecar-tiny"])
def test_flops_per_image_do_not_depend_on_the_batch(name):
    cfg, model = _model(name, **{"model.patch": 4})
    per_stage = {"stage_steps": [2, 2, 2]} if name.startswith("ecar") else {}
    s = dataclasses.replace(cfg.sample, steps=3, cfg=2.0, **per_stage)
    per_image = [count_flops(_pipe(model, cfg), s, batch=n) for n in (1, 2, 5)]
    assert per_image[0] > 0
    assert per_image[1] == pytest.approx(per_image[0], rel=1e-12)
    assert per_image[2] == pytest.approx(per_image[0], rel=1e-12)


def test_dit_flops_scale_with_steps_and_guidance():
    cfg, model = _model("dit-tiny", **{"model.patch": 4})
    s = dataclasses.replace(cfg.sample, steps=4, cfg=1.0)
    f4 = count_flops(_pipe(model, cfg), s, batch=2)
    f8 = count_flops(_pipe(model, cfg), dataclasses.replace(s, steps=8), batch=2)
    f8g = count_flops(_pipe(model, cfg), dataclasses.replace(s, steps=8, cfg=2.0), batch=2)
    assert f4 > 0
    assert f8 == pytest.approx(2 * f4, rel=1e-6)
    assert f8g == pytest.approx(2 * f8, rel=1e-6)  # guidance doubles every evaluation
    # Euler: one forward per step, each the analytic DiT forward of one image
    m = cfg.model
    per_forward = dit_forward(1, 16, 16, m.hidden, m.depth, int(m.hidden * m.mlp_ratio))
    assert f4 == pytest.approx(4 * per_forward / 1e9, rel=1e-12)


def test_ecar_flops_grow_with_stage_steps_and_time_is_positive():
    cfg, model = _model("ecar-tiny", **{"model.patch": 4})
    s = dataclasses.replace(cfg.sample, stage_steps=[2, 2, 2], cfg=1.0)
    small = count_flops(_pipe(model, cfg), s, batch=2)
    big = count_flops(_pipe(model, cfg), dataclasses.replace(s, stage_steps=[2, 2, 8]), batch=2)
    assert big > small > 0
    cost = measure_cost(_pipe(model, cfg), s, batch=4, repeats=2, warmup=1)
    assert cost.seconds_per_image > 0 and cost.gflops_per_image == pytest.approx(small, rel=1e-6)
    d = cost.as_dict()
    assert (d["cost_batch"], d["cost_repeats"], d["cost_warmup"]) == (4, 2, 1)
    assert d["cost_threads"] == torch.get_num_threads()


# ---------------------------------------------------------------- one timing protocol

def test_one_protocol_defaults():
    assert (TIMING_BATCH, TIMING_REPEATS, TIMING_WARMUP) == (64, 5, 2)
    for fn in (measure_cost, time_sampling):
        params = inspect.signature(fn).parameters
        assert params["batch"].default == TIMING_BATCH
        assert params["repeats"].default == TIMING_REPEATS
        assert params["warmup"].default == TIMING_WARMUP
    assert inspect.signature(count_flops).parameters["batch"].default == TIMING_BATCH


@pytest.mark.parametrize("path", ["src/ecar/demo.py", "benchmarks/cost_digits.py"])
def test_callers_use_the_protocol_defaults(path):
    """The demo and the digits cost benchmark call measure_cost(_pipe(model, cfg)) and nothing else."""
    def name(func):
        return getattr(func, "id", getattr(func, "attr", None))

    tree = ast.parse((ROOT / path).read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and name(n.func) == "measure_cost"]
    assert calls, f"{path} no longer calls measure_cost"
    for call in calls:
        assert len(call.args) == 1 and not call.keywords, ast.unparse(call)
