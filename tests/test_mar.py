"""MAR (arXiv 2406.11838) as a method: the masking schedules, the masked loss, the unmasking
loop (order, counts, seeds, guidance, temperature), the sweep and FLOPs, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from ecar.autoencoders import IdentityAutoencoder
from ecar.bench.run import DEFAULT_SWEEP, sweep_settings
from ecar.build import LatentSpec
from ecar.cli import main as cli_main
from ecar.config import ConfigError, load_config
from ecar.engine.masked import MaskedSampleConfig, generate_masked
from ecar.eval.cost import count_flops
from ecar.flow.masking import MaskedFlowObjective, cosine_unmask_counts, mask_ratios, random_masks, random_orders
from ecar.methods import METHODS, apply_sample_overrides, method_of, sampler_flags, total_steps
from ecar.methods.mar import MAR_METHOD, MARSampleConfig, iteration_guidance
from ecar.samplers import euler_maruyama, integrate, time_grid
from ecar.samplers.temperature import integrate_at_temperature
from test_methods import _tiny as _method_tiny
from ecar.pipeline import Pipeline


def _pipe(model, cfg):
    """The pipeline of an in-memory network (its cost is measured in latent space)."""
    return Pipeline(model, cfg, IdentityAutoencoder(1))

ROOT = Path(__file__).resolve().parents[1]


def _tiny(*over: str):
    """mar-tiny on 16×16×1 latents, patch 4 (16 tokens of dim 16), random weights (see
    test_methods._tiny), 5 iterations × 3 head steps, cfg 2."""
    return _method_tiny("mar", "sample.iterations=5", *over)


def _gen(model, sample, labels, seed, **kw):
    return MAR_METHOD.generate(model, sample, labels, torch.Generator().manual_seed(seed), **kw)


# --------------------------------------------------------------------------- registry


def test_mar_is_registered_with_its_own_settings():
    assert METHODS["mar"] is MAR_METHOD and method_of("mar-tiny") is MAR_METHOD
    cfg = load_config(ROOT / "configs" / "digits_mar.yaml")
    assert method_of(cfg.model) is MAR_METHOD and type(cfg.sample) is MARSampleConfig
    assert cfg.sample.cfg_schedule == "linear" and MARSampleConfig().cfg_schedule == "linear"
    with pytest.raises(ConfigError, match=r"'sample.iterations' for method dit.*setting of mar"):
        load_config(ROOT / "configs" / "digits_dit.yaml", ["sample.iterations=4"])
    with pytest.raises(ConfigError, match="sample.stage_steps"):
        load_config(ROOT / "configs" / "digits_mar.yaml", ["sample.stage_steps=[2,2]"])
    for bad, match in [({"iterations": 0}, "iterations"), ({"temperature": -0.1}, "temperature"),
                       ({"steps": 0}, "steps")]:
        with pytest.raises(ConfigError, match=match):
            apply_sample_overrides(cfg.sample, bad)
    flags = {f.flag: f for f in sampler_flags()}
    assert flags["--iterations"].help.startswith("mar:") and flags["--temperature"].type("0.9") == 0.9
    assert "mar:" in flags["--cfg-schedule"].help


# --------------------------------------------------------------------------- masking schedules


@pytest.mark.parametrize("n,k", [(256, 64), (256, 16), (64, 8), (64, 64), (16, 8), (16, 16), (16, 40),
                                 (7, 6), (5, 3), (3, 2), (1, 1), (1, 5), (1000, 10)])
def test_cosine_counts_are_positive_sum_to_the_tokens_and_clamp_k(n, k):
    counts = cosine_unmask_counts(n, k)
    assert len(counts) == min(n, k) and min(counts) >= 1 and sum(counts) == n
    if k >= n:
        assert counts == [1] * n  # K > tokens: one token per iteration


@pytest.mark.parametrize("n,k", [(256, 16), (64, 8), (1000, 10), (16, 4), (256, 32)])
def test_cosine_counts_follow_the_schedule(n, k):
    """Where no clamp binds, ⌊N·cos(π/2·(k+1)/K)⌋ tokens stay masked after iteration k: few
    tokens early, many late."""
    counts = cosine_unmask_counts(n, k)
    left = [n - sum(counts[: i + 1]) for i in range(k)]
    assert left == [math.floor(n * math.cos(math.pi / 2 * (i + 1) / k)) for i in range(k)]
    assert counts[0] < counts[-1]


def _mar_reference_counts(n: int, k: int) -> list[int]:
    """MAR's code (models/mar.py, sample_tokens): masked after iteration i clamped to [1, remaining − 1]."""
    remaining, out = n, []
    for i in range(k):
        nxt = 0 if i == k - 1 else max(1, min(remaining - 1, math.floor(n * math.cos(math.pi / 2 * (i + 1) / k))))
        out.append(remaining - nxt)
        remaining = nxt
    return out


def test_cosine_counts_equal_mars_for_k_up_to_the_token_count():
    for n in (1, 2, 3, 5, 16, 17, 64, 256):
        for k in range(1, n + 1):
            assert cosine_unmask_counts(n, k) == _mar_reference_counts(n, k), (n, k)


def test_more_iterations_than_tokens_are_clamped():
    """MAR's code with K > N has iterations that predict nothing (and still run the transformer)."""
    assert min(_mar_reference_counts(16, 20)) == 0
    assert cosine_unmask_counts(16, 20) == [1] * 16
    with pytest.raises(ValueError):
        cosine_unmask_counts(0, 3)


def test_training_mask_ratios_are_the_truncated_normal():
    r = mask_ratios(200_000, "truncated_normal", 0.7, torch.Generator().manual_seed(0))
    assert r.min() >= 0.7 and r.max() <= 1.0
    # mean of N(1, 0.25²) truncated to [0.7, 1]: 1 − 0.25·(φ(0) − φ(−1.2)) / (Φ(0) − Φ(−1.2))
    phi = lambda v: math.exp(-v * v / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))  # noqa: E731
    mean = 1 - 0.25 * (phi(0) - phi(-1.2)) / (Phi(0) - Phi(-1.2))
    assert abs(r.mean().item() - mean) < 2e-3
    assert (r > 0.95).float().mean() > (r < 0.75).float().mean()  # density rises towards 1
    ratios = torch.tensor([0.7, 0.75, 0.99, 1.0, 0.01])
    masks = random_masks(ratios, 16, torch.Generator().manual_seed(1))
    assert masks.sum(1).tolist() == [12, 12, 16, 16, 1]  # ⌈r·N⌉, at least 1
    assert not torch.equal(masks[0], masks[1])  # a random subset per image


def test_cosine_mask_ratios_are_the_ratios_the_sampler_visits():
    """MaskGIT's cos(π/2·u): P(r <= c) = 1 − (2/π)·arccos(c), all of (0, 1]."""
    r = mask_ratios(200_000, "cosine", generator=torch.Generator().manual_seed(0))
    assert r.min() > 0 and r.max() <= 1
    for c in (0.1, 0.5, 0.9):
        assert abs((r <= c).double().mean().item() - (1 - 2 / math.pi * math.acos(c))) < 5e-3
    with pytest.raises(ValueError, match="cosine"):
        mask_ratios(3, "uniform")
    cfg, model, m = _tiny("model.masking=cosine")
    masks = []
    cond = model.condition
    model.condition = lambda tok, msk, yy: (masks.append(msk), cond(tok, msk, yy))[1]
    try:
        m.objective(model, cfg.flow)(torch.randn(64, 1, 16, 16), torch.zeros(64, dtype=torch.long),
                                     torch.Generator().manual_seed(0))
    finally:
        del model.condition
    assert masks[0].sum(1).min() < 8  # far below MAR's 0.7 · 16
    with pytest.raises(ConfigError, match="model.masking"):
        load_config(None, ["model.name=mar-tiny", "model.masking=linear"])


def test_orders_are_permutations():
    orders = random_orders(6, 16, torch.Generator().manual_seed(0))
    assert torch.equal(orders.sort(1).values, torch.arange(16).expand(6, 16))
    assert len({tuple(o) for o in orders.tolist()}) == 6


# --------------------------------------------------------------------------- the masked loss


def test_the_transformer_never_reads_a_masked_token():
    _, model, _ = _tiny()
    tokens, y = torch.randn(2, 16, 16), torch.tensor([3, 5])
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, ::3] = True
    z = model.condition(tokens, mask, y)
    other = torch.where(mask[..., None], torch.randn_like(tokens) * 10, tokens)
    assert torch.equal(model.condition(other, mask, y), z)
    visible = tokens.clone()
    visible[:, 1] += 1.0  # an unmasked token: every condition may change
    assert not torch.allclose(model.condition(visible, mask, y), z)


@pytest.mark.parametrize("mul", [1, 3])
def test_the_loss_counts_masked_tokens_only(mul):
    """The head sees exactly the masked tokens (× head_batch_mul draws), and the loss is the
    hand-computed velocity MSE over them."""
    cfg, model, m = _tiny(f"model.head_batch_mul={mul}")
    obj = m.objective(model, cfg.flow)
    assert isinstance(obj, MaskedFlowObjective)
    tokens, y = torch.randn(3, 16, 16), torch.tensor([0, 4, 9])
    mask = torch.rand(3, 16, generator=torch.Generator().manual_seed(2)) < 0.6
    seen = {}
    hook = model.head.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], u=args[1], v=out))
    try:
        loss = obj.masked_loss(tokens, y, mask, torch.Generator().manual_seed(3))["loss"]
    finally:
        hook.remove()
    x1 = tokens[mask].repeat(mul, 1)  # the clean masked tokens, in the objective's row order
    xt, u, v = seen["x"][0], seen["u"][0][:, None], seen["v"][0]
    assert xt.shape == (int(mask.sum()) * mul, 16)
    noise = (xt - u * x1) / (1 - u)
    hand = (v - (x1 - noise)).pow(2).mean()
    torch.testing.assert_close(loss, hand, rtol=1e-4, atol=1e-6)
    # the clean values of unmasked tokens reach the loss only through the transformer's condition:
    # with the condition fixed, changing them leaves the loss unchanged
    cond = model.condition
    model.condition = lambda tok, msk, yy: cond(tokens, msk, yy)
    try:
        changed = torch.where(mask[..., None], tokens, torch.randn_like(tokens))
        again = obj.masked_loss(changed, y, mask, torch.Generator().manual_seed(3))["loss"]
    finally:
        del model.condition
    assert torch.equal(again, loss)


def test_the_objective_masks_a_truncated_normal_fraction():
    cfg, model, m = _tiny()
    x, y = torch.randn(64, 1, 16, 16), torch.randint(0, 10, (64,))
    out = m.objective(model, cfg.flow)(x, y, torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and 0.7 <= out["mask_ratio"].item() <= 1.0
    masks = []
    cond = model.condition
    model.condition = lambda tok, msk, yy: (masks.append(msk), cond(tok, msk, yy))[1]
    try:
        m.objective(model, cfg.flow)(x, y, torch.Generator().manual_seed(0))
    finally:
        del model.condition
    per_image = masks[0].sum(1)
    assert per_image.min() >= math.ceil(0.7 * 16) and per_image.max() <= 16 and len(set(per_image.tolist())) > 1


# --------------------------------------------------------------------------- sampling


def test_generation_unmasks_each_token_once_following_the_counts():
    cfg, model, m = _tiny("sample.iterations=6", "sample.cfg=1.0")
    counts = cosine_unmask_counts(16, 6)
    masks = []
    cond = model.condition
    model.condition = lambda tok, msk, yy: (masks.append(msk.clone()), cond(tok, msk, yy))[1]
    try:
        out = _gen(model, cfg.sample, torch.tensor([1, 2, 3]), 0, return_stages=True)
    finally:
        del model.condition
    assert len(masks) == 6 and masks[0].all()
    for k in range(1, 6):
        assert (masks[k] <= masks[k - 1]).all()  # known tokens stay known
        assert (masks[k - 1].sum(1) - masks[k].sum(1)).tolist() == [counts[k - 1]] * 3
    assert masks[-1].sum(1).tolist() == [counts[-1]] * 3
    assert not torch.equal(masks[1][0], masks[1][1])  # each image has its own order
    assert len(out["stages"]) == 6 and torch.equal(out["stages"][-1], out["latents"])
    filled = [(model.tokens(s) != 0).all(-1).sum(1) for s in out["stages"]]
    assert [f.tolist() for f in filled] == [[sum(counts[: k + 1])] * 3 for k in range(6)]


def test_generation_is_deterministic_for_a_seed():
    cfg, model, _ = _tiny("sample.sampler=euler_maruyama", "sample.temperature=0.9")
    y = torch.tensor([0, 1, 2, 3])
    a, b = _gen(model, cfg.sample, y, 7)["latents"], _gen(model, cfg.sample, y, 7)["latents"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, _gen(model, cfg.sample, y, 8)["latents"])
    images = Pipeline(model, cfg, IdentityAutoencoder(1))(labels=y, seed=7).tensor
    assert torch.equal(images, a)


def _conditional_reference(model, labels, counts, steps, seed):
    """MAR sampling with the conditional branch only, written out: same draws, Euler steps."""
    g = torch.Generator().manual_seed(seed)
    B, N, D = labels.shape[0], model.num_tokens, model.token_dim
    orders = torch.rand(B, N, generator=g).argsort(1)
    tokens, masked = torch.zeros(B, N, D), torch.ones(B, N, dtype=torch.bool)
    start = 0
    for n in counts:
        idx = orders[:, start:start + n]
        start += n
        z = model.condition(tokens, masked, labels)
        zc = model.head_condition(torch.stack([z[i, idx[i]] for i in range(B)]))
        x = torch.randn(B, n, D, generator=g)
        for i in range(steps):
            x = x + (1 / steps) * model.velocity(x, torch.full((B,), i / steps), zc)
        for i in range(B):
            tokens[i, idx[i]] = x[i]
            masked[i, idx[i]] = False
    return model.latent(tokens)


@torch.no_grad()
def test_guidance_scale_one_is_the_conditional_output():
    cfg, model, m = _tiny("sample.iterations=4", "sample.steps=3")
    y = torch.tensor([2, 7, 7])
    one = apply_sample_overrides(cfg.sample, {"cfg": 1.0})
    out = _gen(model, one, y, 3)["latents"]
    ref = _conditional_reference(model, y, cosine_unmask_counts(16, 4), 3, 3)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    batches = []
    cond = model.condition
    model.condition = lambda tok, msk, yy: (batches.append(yy.clone()), cond(tok, msk, yy))[1]
    try:
        _gen(model, one, y, 3)
        assert all(torch.equal(b, y) for b in batches)  # no null-label pass at scale 1
        batches.clear()
        guided = _gen(model, cfg.sample, y, 3)["latents"]  # cfg 2, linear ramp: guided every iteration
        assert [len(b) for b in batches] == [6] * 4 and (batches[0][3:] == model.null_class).all()
    finally:
        del model.condition
    assert not torch.allclose(guided, out, atol=1e-3)  # guidance does change the result
    # with the null label embedded like every class, guided = conditional at any scale
    model.y_embed.table.weight.data[:] = model.y_embed.table.weight.data[2]
    torch.testing.assert_close(_gen(model, cfg.sample, y, 3)["latents"], _gen(model, one, y, 3)["latents"],
                               rtol=1e-4, atol=1e-5)


def test_guidance_ramps_linearly_with_the_tokens_generated():
    counts = cosine_unmask_counts(16, 4)
    assert counts == [2, 3, 5, 6]  # 14, 11, 6, 0 left masked: ⌊16·cos(π/8·(k+1))⌋
    s = MARSampleConfig(cfg=3.0)
    assert iteration_guidance(s, counts) == [1 + 2 * f for f in (2 / 16, 5 / 16, 10 / 16, 1.0)]
    assert iteration_guidance(MARSampleConfig(cfg=3.0, cfg_schedule="constant"), counts) == [3.0] * 4
    s = MARSampleConfig(cfg=3.0, cfg_schedule="constant", cfg_interval=[0.0, 0.6])
    assert iteration_guidance(s, counts) == [3.0, 3.0, 1.0, 1.0]
    cfg, model, m = _tiny("sample.iterations=4", "sample.cfg=3.0")
    assert m.loop_settings(model, cfg.sample) == MaskedSampleConfig(
        tuple(counts), tuple(iteration_guidance(cfg.sample, counts)), 3, "euler", 1.0, 1.0)
    y = torch.tensor([1, 5])
    a = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(4))["latents"]
    b = generate_masked(model, y, m.loop_settings(model, cfg.sample), torch.Generator().manual_seed(4))["latents"]
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- temperature


def _gaussian_velocity(mu: float, sigma: float):
    """Exact velocity of the linear path to N(mu, sigma²) data."""

    def v(x, t):
        var = (1 - t) ** 2 + t**2 * sigma**2
        return mu + (x - t * mu) * (t * sigma**2 - (1 - t)) / var

    return v


def test_temperature_scales_the_spread_of_an_ode_sampler():
    noise = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0))
    grid = time_grid(200)
    for tau in (1.0, 0.5, 0.0):
        x = integrate_at_temperature("heun", _gaussian_velocity(2.0, 0.5), noise, grid, temperature=tau)
        torch.testing.assert_close(x, 2.0 + tau * 0.5 * noise, rtol=0, atol=1e-3)
    plain = integrate("euler", _gaussian_velocity(2.0, 0.5), noise, time_grid(5))
    assert torch.equal(integrate_at_temperature("euler", _gaussian_velocity(2.0, 0.5), noise, time_grid(5)), plain)


@pytest.mark.parametrize("tau,s", [(0.7, 1.0), (0.0, 0.5), (1.3, 2.0)])
def test_tempered_euler_maruyama_scales_only_the_injected_noise(tau, s):
    """Against the step written out: drift of the untempered SDE, noise × τ, start τ·ε."""
    v = _gaussian_velocity(1.0, 0.3)
    noise, grid = torch.randn(8, 3, generator=torch.Generator().manual_seed(0)), time_grid(6)
    got = integrate_at_temperature("euler_maruyama", v, noise, grid, torch.Generator().manual_seed(1), s, tau)
    g, x = torch.Generator().manual_seed(1), tau * noise
    for i in range(6):
        t, dt = grid[i], grid[i + 1] - grid[i]
        vt = v(x, t)
        x = x + dt * (vt - 0.5 * s * (x - t * vt))
        if i < 5 and tau * s > 0:
            x = x + tau * torch.sqrt(s * (1 - t) * dt) * torch.randn(x.shape, generator=g)
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-6)
    if tau == 1.0:
        assert torch.equal(got, euler_maruyama(v, noise, grid, torch.Generator().manual_seed(1), s))


# --------------------------------------------------------------------------- sweep and FLOPs


def test_step_counts_and_the_sweep_scale_iterations_and_head_steps():
    cfg, model, m = _tiny("sample.iterations=8", "sample.steps=10")
    assert m.step_counts(model, cfg.sample) == [10] * 8
    half = m.scale_steps(model, cfg.sample, 0.5)
    assert (half.iterations, half.steps) == (4, 5) and (cfg.sample.iterations, cfg.sample.steps) == (8, 10)
    double = m.scale_steps(model, cfg.sample, 2)
    assert (double.iterations, double.steps) == (16, 20)  # 16 tokens: at most 16 iterations
    assert m.scale_steps(model, cfg.sample, 4).iterations == 16
    assert m.step_counts(model, m.scale_steps(model, cfg.sample, 0.01)) == [1]
    assert m.step_counts(model, apply_sample_overrides(cfg.sample, {"iterations": 99})) == [10] * 16
    assert total_steps(m.step_counts(model, double)) == 320


def test_the_bench_sweeps_iterations_and_head_steps_of_the_recipe():
    cfg = load_config(ROOT / "configs" / "digits_mar.yaml")
    model = MAR_METHOD.build(cfg.model, LatentSpec(1, 16, 10))
    points = sweep_settings(_pipe(model, cfg), DEFAULT_SWEEP, ["euler", "heun"])
    got = [(p["setting"].split()[0], p["sample"].sampler, p["sample"].iterations, p["sample"].steps) for p in points]
    assert got[0] == ("shipped", "euler", 8, 10)
    assert [g[2:] for g in got if g[1] == "heun"] == [(1, 1), (2, 2), (4, 5), (8, 10), (16, 20)]
    assert [g[2:] for g in got[1:] if g[1] == "euler"] == [(1, 1), (2, 2), (4, 5), (16, 20)]  # 8 × 10 = shipped


def test_flops_count_the_sampling_call_and_grow_with_iterations_and_steps():
    """The transformer runs once per iteration over the whole grid, the head once per token and
    step (its time embedding once per image, step and iteration): FLOPs are exactly affine in
    the iterations and in the steps, and guidance on every iteration doubles them."""
    cfg, model, _ = _tiny("sample.cfg=1.0")

    def flops(**over):
        return count_flops(_pipe(model, cfg), apply_sample_overrides(cfg.sample, over), batch=4)

    k4, k8, k16 = (flops(iterations=k, steps=4) for k in (4, 8, 16))
    s2, s8 = flops(iterations=4, steps=2), flops(iterations=4, steps=8)
    assert 0 < s2 < k4 < k8 < k16 and k4 < s8
    assert k16 - k8 == pytest.approx(2 * (k8 - k4), rel=1e-9)
    assert s8 - k4 == pytest.approx(2 * (k4 - s2), rel=1e-9)
    assert flops(iterations=4, steps=4, cfg=2.0) == pytest.approx(2 * k4, rel=1e-9)  # linear ramp: > 1 everywhere


# --------------------------------------------------------------------------- CLI

TINY = ["model.hidden=32", "model.depth=1", "model.heads=2", "model.head_width=32", "model.head_depth=1",
        "train.batch_size=8", "train.max_steps=3", "train.tensorboard=false", "train.log_every=1",
        "train.warmup_steps=1", "sample.steps=2", "sample.iterations=3"]


def test_tiny_digits_recipe_trains_samples_and_evaluates_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_mar.yaml"),
                     "--out", str(run), *TINY]) == 0
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    grid, strip = tmp_path / "grid.png", tmp_path / "stages.png"
    assert cli_main(["sample", "--ckpt", str(run), "--n", "10", "--out", str(grid), "--iterations", "4",
                     "--steps", "2", "--temperature", "0.9", "--stages-out", str(strip)]) == 0
    assert Image.open(grid).size[0] > 16 * 5 and Image.open(strip).size[0] > 16 * 4  # 4 iterations
    assert cli_main(["sample", "--ckpt", str(run), "--n", "2", "--out", str(grid), "--stage-steps", "2"]) == 2
    assert "sample.stage_steps" in capsys.readouterr().err
    path = tmp_path / "eval.json"
    assert cli_main(["eval", "--ckpt", str(run), "--n", "40", "--json", str(path), "--cfg", "1.5"]) == 0
    res = json.loads(path.read_text())
    assert math.isfinite(res["fid"]) and res["mode"] == "mar" and res["steps"] == [2, 2, 2]
    assert cli_main(["info", "--ckpt", str(run)]) == 0
    out = capsys.readouterr().out
    assert "method mar, family mar" in out
    assert "GFLOPs per image at the recipe's sampler settings" in out  # the cost anatomy
    assert "unit   3:" in out and "head" in out.split("all:")[1]


def test_fashion_recipe_trains_and_samples(tmp_path, fashion_mnist_dir):
    cfg = load_config(ROOT / "configs" / "fashion_mar.yaml")
    assert cfg.data.name == "fashion-mnist" and cfg.model.patch == 4 and type(cfg.sample) is MARSampleConfig
    assert MAR_METHOD.build(cfg.model, LatentSpec(1, 32, 10)).num_tokens == 64
    run = tmp_path / "run"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "fashion_mar.yaml"),
                     "--out", str(run), *TINY]) == 0
    assert cli_main(["sample", "--ckpt", str(run), "--n", "10", "--out", str(tmp_path / "g.png")]) == 0
