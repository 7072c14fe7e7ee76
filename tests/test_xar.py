"""xAR (arXiv 2502.20388) as a method: unit layouts, the block-causal mask, the noisy-context
objective and its clean-context ablation, the image unit against DiT's objective, cached
sampling against recomputation, guidance over units, the sweep and FLOPs, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ecar.bench.run import DEFAULT_SWEEP, run_bench, sweep_settings
from ecar.build import LatentSpec
from ecar.cli import main as cli_main
from ecar.config import ConfigError, load_config
from ecar.engine.next_x import NextXSampleConfig, generate_next_x
from ecar.eval.cost import count_flops
from ecar.flow import FlowMatchingObjective
from ecar.flow.next_x import NextXObjective
from ecar.methods import METHODS, apply_sample_overrides, method_of, total_steps
from ecar.methods.xar import XAR_METHOD, XARSampleConfig, unit_guidance
from ecar.models.dit import DiT, DiTConfig
from ecar.models.xar import XAR, XARConfig, unit_layout
from ecar.train.trainer import lr_factor
from test_methods import _tiny as _method_tiny
from ecar.autoencoders import IdentityAutoencoder
from ecar.pipeline import Pipeline


def _pipe(model, cfg):
    """The pipeline of an in-memory network (its cost is measured in latent space)."""
    return Pipeline(model, cfg, IdentityAutoencoder(1))

ROOT = Path(__file__).resolve().parents[1]
UNITS = [("token", 16), ("cell", 4), ("scale", 3), ("image", 1)]


def _tiny(*over: str):
    """xar-tiny on 16×16×1 latents, patch 4 (a 4×4 grid of 16 tokens of dim 16), random weights."""
    return _method_tiny("xar", *over)


# --------------------------------------------------------------------------- registry and layout


def test_xar_is_registered_with_its_own_settings():
    assert METHODS["xar"] is XAR_METHOD and method_of("xar-tiny") is XAR_METHOD
    cfg = load_config(ROOT / "configs" / "digits_xar.yaml")
    assert method_of(cfg.model) is XAR_METHOD and type(cfg.sample) is XARSampleConfig
    assert cfg.sample.cfg_schedule == "linear"
    for bad, match in [("model.unit=pixel", "model.unit"), ("model.order=spiral", "model.order"),
                       ("model.cell=0", "model.cell"), ("model.stages=[2,3]", "model.stages")]:
        with pytest.raises(ConfigError, match=match):
            load_config(ROOT / "configs" / "digits_xar.yaml", [bad])
    with pytest.raises(ConfigError, match="does not divide"):
        load_config(None, ["model.name=xar-tiny", "model.cell=3"]).model.validate_latent(16)
    with pytest.raises(ConfigError, match="sample.stage_steps"):
        load_config(ROOT / "configs" / "digits_xar.yaml", ["sample.stage_steps=[2,2]"])


@pytest.mark.parametrize("unit,units", UNITS)
def test_units_cover_every_token_once(unit, units):
    cfg, model, _ = _tiny(f"model.unit={unit}")
    assert model.num_units == units
    x = torch.randn(2, 1, 16, 16)
    seq = model.sequence([torch.nn.functional.avg_pool2d(x, 16 // s) for s in model.unit_sizes])
    assert seq.shape[1] == sum(model.counts) == (21 if unit == "scale" else 16)
    assert torch.equal(model.latent(seq), x)  # the last unit (or the finest scale) is the latent


def test_cells_are_k_by_k_neighbours_in_the_configured_order():
    cfg = XARConfig(unit="cell", cell=2)
    perm, counts = unit_layout(cfg, 4)
    assert counts == [4] * 4 and sorted(perm) == list(range(16))
    assert perm[:8] == [0, 1, 4, 5, 2, 3, 6, 7]  # cell (0, 0) then cell (0, 1), raster inside
    col, _ = unit_layout(XARConfig(unit="cell", cell=2, order="column"), 4)
    assert col[:8] == [0, 1, 4, 5, 8, 9, 12, 13]  # cell (0, 0) then cell (1, 0)
    tok, counts = unit_layout(XARConfig(unit="token", order="column"), 3)
    assert tok == [0, 3, 6, 1, 4, 7, 2, 5, 8] and counts == [1] * 9


# --------------------------------------------------------------------------- the mask


@pytest.mark.parametrize("unit,units", UNITS)
def test_block_causal_mask_sees_earlier_units_and_itself_never_later(unit, units):
    _, model, _ = _tiny(f"model.unit={unit}")
    mask, ids = model.block_causal_mask(units), model.unit_of
    for i in range(len(ids)):
        for j in range(len(ids)):
            assert bool(mask[i, j]) == bool(ids[j] <= ids[i])


@pytest.mark.parametrize("unit", ["token", "cell", "scale"])
def test_a_unit_output_never_depends_on_later_units(unit):
    """Changing the tokens and times of units > u leaves the velocity of units <= u unchanged,
    and changing unit u itself changes it (the mask is not vacuous)."""
    _, model, _ = _tiny(f"model.unit={unit}")
    g = torch.Generator().manual_seed(3)
    L, U, u = sum(model.counts), model.num_units, 1
    seq, t, y = torch.randn(2, L, 16, generator=g), torch.rand(2, U, generator=g), torch.tensor([1, 2])
    end = model.starts()[u + 1]
    with torch.no_grad():
        base = model.velocity_seq(seq, t, y)
        later = seq.clone()
        later[:, end:] = torch.randn(later[:, end:].shape, generator=g)
        t2 = t.clone()
        t2[:, u + 1:] = torch.rand(t2[:, u + 1:].shape, generator=g)
        moved = model.velocity_seq(later, t2, y)
        own = seq.clone()
        own[:, model.starts()[u]:end] += 1.0
        changed = model.velocity_seq(own, t, y)
    torch.testing.assert_close(moved[:, :end], base[:, :end], rtol=0, atol=1e-6)
    assert (changed[:, :end] - base[:, :end]).abs().max() > 1e-3


def test_two_stream_mask_gives_noisy_units_clean_earlier_context():
    _, model, _ = _tiny("model.unit=cell")
    m, ids = model.two_stream_mask(), model.unit_of
    L = len(ids)
    for i in range(L):
        for j in range(L):
            assert bool(m[i, j]) == bool(ids[j] <= ids[i])            # clean stream: block-causal
            assert not m[i, L + j]                                     # clean never sees noisy
            assert bool(m[L + i, j]) == bool(ids[j] < ids[i])          # noisy: earlier clean units
            assert bool(m[L + i, L + j]) == bool(ids[j] == ids[i])     # and its own unit


# --------------------------------------------------------------------------- the objective


def test_image_unit_reproduces_dits_flow_matching_loss():
    """One unit, same weights (a DiT loads the xAR network's state dict), same batch and
    generator: the xAR objective's loss is the DiT objective's."""
    cfg, model, _ = _tiny("model.unit=image", "flow.time_sampling=logit_normal", "flow.class_dropout=0.5")
    dit = DiT(DiTConfig(hidden=64, depth=2, heads=4, patch=4), 1, 16, 10)
    dit.load_state_dict(model.state_dict(), strict=True)
    x, y = torch.randn(8, 1, 16, 16), torch.arange(8)
    ours = NextXObjective(model, cfg.flow)(x, y, torch.Generator().manual_seed(5))["loss"]
    theirs = FlowMatchingObjective(dit, cfg.flow)(x, y, torch.Generator().manual_seed(5))["loss"]
    other = FlowMatchingObjective(dit, cfg.flow)(x, y, torch.Generator().manual_seed(6))["loss"]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
    assert abs(other.item() - theirs.item()) > 1e-4  # the seed matters, so equality means something
    with torch.no_grad():
        t = torch.rand(8)
        torch.testing.assert_close(model(x, t, y), dit(x, t, y), rtol=0, atol=1e-6)


def _objective_by_hand(model, x, y, g, noisy: bool):
    """The loss written out: per-(image, unit) times, noise per unit latent, per-token x_t."""
    B, U = x.shape[0], model.num_units
    t = torch.sigmoid(torch.randn(B * U, generator=g)).reshape(B, U)
    lat = [torch.nn.functional.avg_pool2d(x, x.shape[-1] // s) for s in model.unit_sizes]
    eps = [torch.randn(z.shape, generator=g) for z in lat]
    drop = torch.rand(B, generator=g) < 0.1
    y = torch.where(drop, torch.full_like(y, model.null_class), y)
    clean, noise = model.sequence(lat), model.sequence(eps)
    tt = torch.stack([t[:, int(model.unit_of[i])] for i in range(clean.shape[1])], 1)[..., None]
    x_t = (1 - tt) * noise + tt * clean
    v = model.velocity_seq(x_t, t, y) if noisy else model.velocity_clean_context(clean, x_t, t, y)
    return ((v - (clean - noise)) ** 2).mean(), t


@pytest.mark.parametrize("unit", ["token", "cell", "scale"])
@pytest.mark.parametrize("noisy", [True, False])
def test_every_unit_is_noised_at_its_own_time_and_regresses_its_velocity(unit, noisy):
    cfg, model, _ = _tiny(f"model.unit={unit}", f"model.noisy_context={str(noisy).lower()}",
                          "flow.time_sampling=logit_normal")
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 3, 5, 9])
    loss = NextXObjective(model, cfg.flow)(x, y, torch.Generator().manual_seed(2))["loss"]
    ref, t = _objective_by_hand(model, x, y, torch.Generator().manual_seed(2), noisy)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=0)
    assert t.std(dim=1).min() > 0  # units of one image have different times


def test_clean_context_sees_clean_units_and_noisy_context_does_not():
    """With clean context, the prediction for unit u is the one a sampler makes with the
    clean earlier units at t = 1 (the same as a block-causal pass over [clean < u, noisy u]);
    noisy context conditions on the noised earlier units instead."""
    _, model, _ = _tiny("model.unit=cell")
    g = torch.Generator().manual_seed(4)
    L, U = sum(model.counts), model.num_units
    clean, noisy, t, y = torch.randn(2, L, 16, generator=g), torch.randn(2, L, 16, generator=g), \
        torch.rand(2, U, generator=g), torch.tensor([1, 2])
    with torch.no_grad():
        two = model.velocity_clean_context(clean, noisy, t, y)
        for u in range(U):
            a, b = model.starts()[u], model.starts()[u + 1]
            seq = torch.cat([clean[:, :a], noisy[:, a:b]], 1)
            times = torch.ones(2, u + 1)
            times[:, u] = t[:, u]
            ref = model.velocity_seq(seq, times, y)[:, a:b]
            torch.testing.assert_close(two[:, a:b], ref, rtol=0, atol=1e-5)
        noisy_ctx = model.velocity_seq(noisy, t, y)
    assert (noisy_ctx[:, 4:] - two[:, 4:]).abs().max() > 1e-3


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("unit,units", UNITS)
@pytest.mark.parametrize("sampler", ["euler", "heun", "euler_maruyama"])
def test_kv_cached_sampling_equals_full_recomputation(unit, units, sampler):
    cfg, model, m = _tiny(f"model.unit={unit}", f"sample.sampler={sampler}", "sample.cfg=2.0",
                          "sample.cfg_interval=[0,0.6]")
    settings = m.loop_settings(model, cfg.sample)
    assert len(settings.steps) == units
    y = torch.tensor([0, 4, 9])
    a = generate_next_x(model, y, settings, torch.Generator().manual_seed(7), return_stages=True)
    b = generate_next_x(model, y, settings, torch.Generator().manual_seed(7), return_stages=True, use_cache=False)
    assert a["latents"].shape == (3, 1, 16, 16) and len(a["stages"]) == units
    assert (a["latents"] - b["latents"]).abs().max() <= 1e-4
    assert a["latents"].abs().mean() > 0.1



@pytest.mark.parametrize("unit", ["token", "scale"])
def test_renoised_context_is_cached_like_recomputation_and_changes_the_result(unit):
    cfg, model, m = _tiny(f"model.unit={unit}", "sample.context_time=0.7", "sample.sampler=euler_maruyama")
    settings = m.loop_settings(model, cfg.sample)
    assert settings.context_time == 0.7
    y = torch.tensor([2, 5])
    a = generate_next_x(model, y, settings, torch.Generator().manual_seed(3))["latents"]
    b = generate_next_x(model, y, settings, torch.Generator().manual_seed(3), use_cache=False)["latents"]
    clean = m.generate(model, apply_sample_overrides(cfg.sample, {"context_time": 1.0}), y,
                       torch.Generator().manual_seed(3))["latents"]
    assert (a - b).abs().max() <= 1e-4 and (a - clean).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="context_time"):
        apply_sample_overrides(cfg.sample, {"context_time": 0.0})

def test_sampling_is_deterministic_for_a_seed_and_streams_each_unit():
    cfg, model, m = _tiny("model.unit=cell")
    y = torch.tensor([1, 2])
    seen = []
    a = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(1), on_unit=lambda u, z: seen.append(z))
    b = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(1))
    c = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(2))
    assert torch.equal(a["latents"], b["latents"]) and not torch.equal(a["latents"], c["latents"])
    assert len(seen) == 4 and torch.equal(seen[-1], a["latents"])
    assert (seen[0] != 0).flatten(1).sum(1).tolist() == [64, 64]  # one 2×2 cell of 4×4-pixel tokens


def test_guidance_ramps_linearly_over_units_and_scale_one_is_conditional():
    sample = XARSampleConfig(cfg=3.0)
    assert unit_guidance(sample, 4) == [1.5, 2.0, 2.5, 3.0]
    assert unit_guidance(sample, 1) == [3.0]
    assert unit_guidance(XARSampleConfig(cfg=3.0, cfg_interval=[0.0, 0.6]), 4) == [1.5, 2.0, 1.0, 1.0]
    cfg, model, m = _tiny("model.unit=cell", "sample.cfg=1.0")
    y = torch.tensor([3, 4])
    out = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(0))["latents"]
    # written out: conditional velocity only, unit by unit with a cache of the clean units
    g = torch.Generator().manual_seed(0)
    cache, done = model.new_cache(), []
    with torch.no_grad():
        for u in range(model.num_units):
            x = torch.randn(2, model.counts[u], 16, generator=g)
            grid = torch.linspace(0, 1, cfg.sample.steps + 1)
            for i in range(cfg.sample.steps):
                x = x + (grid[i + 1] - grid[i]) * model.unit_velocity(x, grid[i], y, u, cache)
            model.append_unit(x, y, u, cache)
            done.append(x)
    torch.testing.assert_close(out, model.latent(torch.cat(done, 1)), rtol=0, atol=1e-6)


def test_loop_settings_are_checked():
    with pytest.raises(ValueError, match="one step count"):
        NextXSampleConfig((2, 2), (1.0,))
    _, model, _ = _tiny()
    with pytest.raises(ValueError, match="4 units"):
        generate_next_x(model, torch.tensor([1]), NextXSampleConfig((2,), (1.0,)))


# --------------------------------------------------------------------------- sweep and FLOPs


def test_step_counts_and_the_bench_sweep_scale_the_steps_of_every_unit():
    cfg = load_config(ROOT / "configs" / "digits_xar.yaml")
    model = XAR_METHOD.build(cfg.model, LatentSpec(1, 16, 10))
    assert XAR_METHOD.step_counts(model, cfg.sample) == [10] * 4
    half = XAR_METHOD.scale_steps(model, cfg.sample, 0.5)
    assert half.steps == 5 and cfg.sample.steps == 10 and total_steps(XAR_METHOD.step_counts(model, half)) == 20
    points = sweep_settings(_pipe(model, cfg), DEFAULT_SWEEP, ["euler", "heun"])
    assert [(p["sample"].sampler, p["sample"].steps) for p in points] == [
        ("euler", 10), ("euler", 1), ("euler", 2), ("euler", 5), ("euler", 20),
        ("heun", 1), ("heun", 2), ("heun", 5), ("heun", 10), ("heun", 20)]


@pytest.mark.parametrize("unit", ["token", "cell", "image"])
def test_flops_are_affine_in_the_steps_and_guidance_doubles_the_integration(unit):
    cfg, model, _ = _tiny(f"model.unit={unit}", "sample.cfg=1.0")

    def flops(**over):
        return count_flops(_pipe(model, cfg), apply_sample_overrides(cfg.sample, over), batch=4)

    f2, f4, f8 = flops(steps=2), flops(steps=4), flops(steps=8)
    assert 0 < f2 < f4 < f8
    assert f8 - f4 == pytest.approx(2 * (f4 - f2), rel=1e-9)
    guided = flops(steps=4, cfg=2.0, cfg_schedule="constant")
    assert guided == pytest.approx(2 * f4, rel=1e-9)  # appends and steps run on the doubled batch


# --------------------------------------------------------------------------- CLI

TINY = ["model.hidden=32", "model.depth=1", "model.heads=2", "train.batch_size=8", "train.max_steps=3",
        "train.tensorboard=false", "train.log_every=1", "train.warmup_steps=1", "sample.steps=2"]


@pytest.mark.parametrize("unit", ["token", "cell", "scale", "image"])
def test_every_unit_trains_samples_and_evaluates_through_the_cli(unit, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_xar.yaml"),
                     "--out", str(run), f"model.unit={unit}", *TINY]) == 0
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    grid = tmp_path / "grid.png"
    assert cli_main(["sample", "--ckpt", str(run), "--n", "10", "--out", str(grid), "--steps", "2",
                     "--sampler", "euler_maruyama", "--stages-out", str(tmp_path / "units.png")]) == 0
    path = tmp_path / "eval.json"
    assert cli_main(["eval", "--ckpt", str(run), "--n", "20", "--json", str(path), "--cfg", "1.5"]) == 0
    res = json.loads(path.read_text())
    units = dict(UNITS)[unit]
    assert math.isfinite(res["fid"]) and res["mode"] == "xar" and res["steps"] == [2] * units
    assert cli_main(["info", "--ckpt", str(run)]) == 0
    assert "method xar, family xar" in capsys.readouterr().out


def test_fashion_recipe_trains_and_samples(tmp_path, fashion_mnist_dir):
    cfg = load_config(ROOT / "configs" / "fashion_xar.yaml")
    assert cfg.data.name == "fashion-mnist" and type(cfg.sample) is XARSampleConfig
    model = XAR_METHOD.build(cfg.model, LatentSpec(1, 32, 10))
    assert isinstance(model, XAR) and model.grid == 8
    run = tmp_path / "run"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "fashion_xar.yaml"),
                     "--out", str(run), *TINY]) == 0
    assert cli_main(["sample", "--ckpt", str(run), "--n", "10", "--out", str(tmp_path / "g.png")]) == 0


def test_a_bench_of_xar_alone_reports_beside_an_earlier_bench(tmp_path, monkeypatch):
    """``ecar bench --with OLD``: the earlier rows come first, unchanged (plus where they came
    from), and the summary compares the new recipe with them; a bench measured differently
    (here: another --n-eval) is refused with what differs."""
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "cache"))
    kw = dict(train_minutes=0.05, n_eval=32, step_sweep=(0.5,), device="cpu", progress=False, cost_batch=4,
              cost_repeats=1, seeds=(0,), samplers=("euler",))
    old = run_bench([str(ROOT / "configs" / "digits_dit.yaml")], None, out=tmp_path / "old", overrides=TINY, **kw)
    rows = run_bench([str(ROOT / "configs" / "digits_xar.yaml")], None, out=tmp_path / "new",
                     overrides=TINY, previous=[tmp_path / "old"], **kw)
    doc = json.loads((tmp_path / "new" / "bench.json").read_text())
    assert [r["name"] for r in rows[:len(old)]] == ["digits_dit"] * len(old)
    assert [dict((k, v) for k, v in r.items() if k != "bench") for r in rows[:len(old)]] == \
        json.loads(json.dumps(old))
    assert rows[0]["bench"] == str(tmp_path / "old" / "bench.json") and rows[-1]["mode"] == "xar"
    assert doc["meta"]["with"][0]["path"] == str(tmp_path / "old" / "bench.json")
    assert "equal_quality_vs_digits_dit" in doc["methods"]["digits_xar"]
    with pytest.raises(ValueError, match=r"samples per setting \(--n-eval\): 32 there, 16 here"):
        run_bench([str(ROOT / "configs" / "digits_xar.yaml")], None, out=tmp_path / "bad", overrides=TINY,
                  previous=[tmp_path / "old" / "bench.json"], **{**kw, "n_eval": 16})
    assert not (tmp_path / "bad").exists()  # refused before any training


# --------------------------------------------------------------------------- the run length


@pytest.mark.parametrize("max_steps", [6, 12])
def test_the_learning_rate_schedule_follows_the_configured_run_length(max_steps, tmp_path):
    """Warm-up, then a cosine that spans exactly the configured run: the logged rate of every
    step is lr·lr_factor(step), halfway through the cosine it is halfway to the floor, the last
    step is one step from the floor, and the schedule stretches with max_steps."""
    over = ["train.warmup_steps=2", "train.lr=0.01", "train.min_lr_ratio=0.1", f"train.max_steps={max_steps}"]
    cfg = load_config(ROOT / "configs" / "digits_xar.yaml", over)
    w, floor = 2, 0.1
    assert [lr_factor(s, cfg) for s in range(w)] == [0.5, 1.0]
    span = max_steps - w
    assert lr_factor(w, cfg) == pytest.approx(1.0)
    assert lr_factor(w + span // 2, cfg) == pytest.approx(floor + (1 - floor) * 0.5)
    assert lr_factor(max_steps - 1, cfg) == pytest.approx(floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (span - 1) / span)))
    assert lr_factor(max_steps, cfg) == pytest.approx(floor)
    other = load_config(ROOT / "configs" / "digits_xar.yaml", over[:-1] + [f"train.max_steps={2 * max_steps}"])
    assert lr_factor(w + span // 2, other) > lr_factor(w + span // 2, cfg) + 0.1  # a longer run decays later
    run = tmp_path / "run"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_xar.yaml"), "--out", str(run),
                     *TINY, *over, "train.log_every=1"]) == 0
    logged = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([0.01 * lr_factor(s, cfg) for s in range(max_steps)])
