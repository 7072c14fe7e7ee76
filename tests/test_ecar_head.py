"""E-CAR's cheaper variants: the AR pass over parent tokens (``model.ar_input=parent``) and the
head's conditioning modes (``model.head_cond``): same results cached and uncached, the
dependencies each design promises, and the per-step cost each one saves."""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.engine.multistage import generate_multistage
from ecar.errors import ConfigError


def _model(*over, head="transformer"):
    cfg = load_config(None, ["model.name=ecar-tiny", "model.patch=2", f"model.head={head}", *over])
    cfg.data.num_classes = 10
    torch.manual_seed(0)
    model, method = build_model(cfg, LatentSpec(1, 16, 10))  # grids 1, 2, 4, 8
    with torch.no_grad():  # leave the zero-initialised identity start: every path must matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, model.eval(), method


@pytest.mark.parametrize("cond", ["token", "stage", "add"])
@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_parent_input_cached_loop_matches_the_full_pass(cond, head):
    cfg, model, method = _model("model.ar_input=parent", f"model.head_cond={cond}", head=head)
    st = method.stage_settings(model, dataclasses.replace(cfg.sample, stage_steps=[2, 2, 2, 2], cfg=2.0,
                                                          cfg_interval=[0.0, 0.7]))
    y = torch.tensor([1, 2, 3])
    a = generate_multistage(model, y, st, torch.Generator().manual_seed(3))["latents"]
    b = generate_multistage(model, y, st, torch.Generator().manual_seed(3), use_cache=False)["latents"]
    assert torch.isfinite(a).all() and a.std() > 0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_parent_pass_skips_the_finest_grid_and_is_stage_causal():
    cfg, model, _ = _model("model.ar_input=parent")
    assert model.grids == [1, 2, 4, 8]
    y = torch.tensor([4, 5])
    ends = [torch.randn(2, 1, n, n) for n in model.schedule.sizes]
    inputs = [model.ar_input(ends[s - 1] if s else None, s, ends[s]) for s in range(4)]
    assert inputs[0] is None and inputs[3].shape[-1] == model.schedule.sizes[2]  # stage 3's own grid
    calls = []
    hook = model.blocks[0].register_forward_hook(lambda m, a, o: calls.append(o.shape[1]))
    z = model.condition(inputs, y)
    hook.remove()
    assert calls == [1 + 1 + 4 + 16]  # class token + the grids of stages 1..3, never the 8×8 one
    assert [t.shape[1] for t in z] == [1, 4, 16, 64]
    changed = list(inputs)
    changed[2] = inputs[2] + 1.0  # stage 2's end state: conditions stages 3 and 4 only
    z2 = model.condition(changed, y)
    for s in (0, 1):
        torch.testing.assert_close(z2[s], z[s])
    for s in (2, 3):
        assert not torch.allclose(z2[s], z[s])
    # the four children of one parent get four different conditions
    kids = z[3].reshape(2, 4, 2, 4, 2, -1)[:, 0, :, 0]  # top-left parent's 2×2 children
    assert not torch.allclose(kids[:, 0, 0], kids[:, 1, 1])


@pytest.mark.parametrize("cond", ["token", "stage", "add"])
@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_time_per_stage_equals_time_per_token(cond, head):
    cfg, model, _ = _model(f"model.head_cond={cond}", head=head)
    n = sum(g * g for g in model.grids)
    x, z = torch.randn(3, n, model.token_dim), torch.randn(3, n, cfg.model.hidden)
    u = torch.rand(3, model.num_stages)
    per_token = u.repeat_interleave(torch.tensor([g * g for g in model.grids]), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model.velocity_all(x, u, z), model.velocity_all(x, per_token, z))


def _call_flops(model, zc, n):
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        model.velocity(torch.zeros(2, n, model.token_dim), torch.full((2,), 0.5), zc, model.num_stages - 1)
    return c.get_total_flops()


def test_stage_and_add_conditioning_take_the_modulation_out_of_every_step():
    n, flops, proj = 64, {}, {}
    for cond in ("token", "stage", "add"):
        cfg, model, _ = _model(f"model.head_cond={cond}")
        z = torch.randn(2, n, cfg.model.hidden)
        with torch.no_grad(), FlopCounterMode(display=False) as c:
            zc = model.head_condition(z)
        proj[cond], flops[cond] = c.get_total_flops(), _call_flops(model, zc, n)
    w, depth = cfg.model.head_width, cfg.model.head_depth
    mod = 2 * w * (6 * w * depth + 2 * w)  # one row's modulation: every block's 6w, the final layer's 2w
    b = 2
    # token: b·n rows of modulation per step; stage and add: b rows (the time part)
    assert flops["token"] - flops["stage"] == b * n * mod - b * mod
    assert flops["stage"] == flops["add"]
    assert proj["stage"] - proj["add"] == b * n * mod  # paid once per stage instead of per step
    assert proj["add"] == proj["token"]


def test_unknown_modes_are_config_errors():
    for bad in ("model.ar_input=pixels", "model.head_cond=film", "model.head_mlp_ratio=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, ["model.name=ecar-tiny", bad])


def test_parent_objective_trains_the_expansion():
    cfg, model, method = _model("model.ar_input=parent", "model.head_cond=add")
    model.train()
    obj = method.objective(model, cfg.flow)
    out = obj(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]), torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(e.weight.grad is not None and e.weight.grad.abs().sum() > 0 for e in model.expand)


# ------------------------------------------------------------ model.head_grid_out (seams)

@pytest.mark.parametrize("head", ["mlp", "transformer"])
def test_grid_output_reads_across_token_borders_and_only_there(head):
    """With head_grid_out a token's output pixels on its border depend on the neighbouring
    token (through the 3×3 convolution), its interior pixels do not; without it no output pixel
    of a token depends on another token's input (mlp head: nothing crosses a token)."""
    for f, crosses in ((0, False), (4, True)):
        # patch 4: a token has interior pixels whose 3×3 neighbourhood stays inside it
        cfg, model, _ = _model("model.head_cond=add", f"model.head_grid_out={f}", "model.patch=4", head=head)
        s, g, p = model.num_stages - 1, model.grids[-1], cfg.model.patch
        zc = model.head_condition(torch.randn(1, g * g, cfg.model.hidden))
        x = torch.randn(1, g * g, model.token_dim, requires_grad=True)
        lat = model.stage_latent(model.velocity(x, torch.full((1,), 0.5), zc, s), s)
        # token 0 occupies latent pixels [0:p, 0:p]; its right neighbour is token 1
        border = torch.autograd.grad(lat[0, 0, 0, p - 1], x, retain_graph=True)[0][0, 1]
        inner = torch.autograd.grad(lat[0, 0, 1, 1], x)[0][0, 1]
        if head == "mlp":
            assert (border.abs().sum() > 0) == crosses, (f, head)
            assert inner.abs().sum() == 0, f
        else:  # attention crosses tokens anyway; the conv adds the border path on top
            assert border.abs().sum() > 0


def test_grid_output_per_stage_equals_all_stages_and_cache():
    cfg, model, method = _model("model.ar_input=parent", "model.head_cond=add", "model.head_grid_out=4")
    n = sum(g * g for g in model.grids)
    x, z = torch.randn(2, n, model.token_dim), torch.randn(2, n, cfg.model.hidden)
    u = torch.rand(2, model.num_stages)
    with torch.no_grad():
        whole = model.velocity_all(x, u, z)
        zc = model.head_condition(z)
        at, parts = 0, []
        for s, g in enumerate(model.grids):
            sl = slice(at, at + g * g)
            parts.append(model.velocity(x[:, sl], u[:, s], zc[:, sl], s))
            at += g * g
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=1e-5)
    st = method.stage_settings(model, dataclasses.replace(cfg.sample, stage_steps=[2, 2, 2, 2], cfg=2.0,
                                                          cfg_interval=[0.0, 0.7]))
    y = torch.tensor([1, 2])
    a = generate_multistage(model, y, st, torch.Generator().manual_seed(3))["latents"]
    b = generate_multistage(model, y, st, torch.Generator().manual_seed(3), use_cache=False)["latents"]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_grid_output_trains_and_is_validated():
    cfg, model, method = _model("model.head_cond=add", "model.head_grid_out=4")
    model.train()
    out = method.objective(model, cfg.flow)(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3]),
                                            torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert model.head.grid_out.weight.grad.abs().sum() > 0 and model.head.final.linear.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="head_grid_out"):
        load_config(None, ["model.name=ecar-tiny", "model.head_grid_out=-1"])
