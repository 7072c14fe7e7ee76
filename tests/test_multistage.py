"""E-CAR's stage pyramid, coupled targets, windows and the jump (issue 3, acceptance 3)."""

import pytest
import torch

from ecar.flow.pyramid import (
    StageSchedule,
    downsample,
    jump,
    max_start_level,
    pyramid,
    stage_targets,
    upsample,
)
from ecar.flow.paths import interpolate


def test_pyramid_is_area_mean():
    x = torch.randn(2, 3, 8, 8)
    p = pyramid(x, [1, 2, 4, 8])
    assert [t.shape[-1] for t in p] == [1, 2, 4, 8]
    torch.testing.assert_close(p[0][..., 0, 0], x.mean(dim=(2, 3)))
    torch.testing.assert_close(downsample(upsample(p[1], 8), 2), p[1])


@pytest.mark.parametrize("windows", [None, [0.2, 0.5, 0.8]])
def test_windows_tile_unit_interval(windows):
    sched = StageSchedule.build([2, 4, 8, 16], windows)
    w = sched.windows()
    assert w[0][0] == 0.0 and w[-1][1] == 1.0
    for (a0, a1), (b0, b1) in zip(w, w[1:]):
        assert a1 == b0 and a0 < a1  # no gaps, no overlaps, increasing
    assert sched.tau[-1] == 1.0 and sched.sigma[0] == 0.0
    # each stage starts no later than the previous stage ended (the jump loses a little signal)
    for s in range(1, 4):
        assert 0 < sched.sigma[s] <= sched.tau[s - 1]


def test_flowar_windows_are_full():
    sched = StageSchedule.build([2, 4, 8], None, flowar=True)
    assert sched.windows() == [(0.0, 1.0)] * 3 and sched.sigma == (0.0,) * 3


def test_bad_windows_are_rejected():
    with pytest.raises(ValueError, match="increase"):
        StageSchedule.build([2, 4, 8], [0.6, 0.4])
    with pytest.raises(ValueError, match="interior"):
        StageSchedule.build([2, 4, 8], [0.5])


def test_targets_endpoints_and_clean_last_stage():
    sched = StageSchedule.build([2, 4, 8, 16], [0.3, 0.55, 0.8])
    x = torch.randn(3, 2, 16, 16)
    g = torch.Generator().manual_seed(0)
    tg = stage_targets(x, sched, g)
    xs = pyramid(x, list(sched.sizes))
    for s, t in enumerate(tg):
        a, b = t["start"], t["end"]
        assert torch.equal(interpolate(a, b, torch.zeros(3)), a)   # u = 0 -> start point
        assert torch.equal(interpolate(a, b, torch.ones(3)), b)    # u = 1 -> end point
        # start and end share one noise draw: recover it from both and compare
        eps_end = (b - sched.tau[s] * xs[s]) / (1 - sched.tau[s]) if sched.tau[s] < 1 else None
        prev = upsample(xs[s - 1], sched.sizes[s]) if s else torch.zeros_like(a)
        eps_start = (a - sched.sigma[s] * prev) / (1 - sched.sigma[s])
        if eps_end is not None:
            torch.testing.assert_close(eps_start, eps_end, rtol=1e-4, atol=1e-4)
        if s == 0:
            assert torch.equal(t["cond"], torch.zeros_like(a))
        else:  # the AR input is the previous end state, upsampled; a_s is its jump
            torch.testing.assert_close(t["cond"], upsample(tg[s - 1]["end"], sched.sizes[s]))
            r = sched.sigma[s] / sched.tau[s - 1]
            torch.testing.assert_close(downsample(a, sched.sizes[s - 1]), r * tg[s - 1]["end"],
                                       rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tg[-1]["end"], x)  # the last stage ends at clean data
    assert sched.sigma[0] == 0.0


def test_flowar_targets_start_from_noise_and_condition_on_previous():
    sched = StageSchedule.build([2, 4], None, flowar=True)
    x = torch.randn(2, 1, 4, 4)
    tg = stage_targets(x, sched, torch.Generator().manual_seed(0))
    torch.testing.assert_close(tg[1]["end"], x)
    torch.testing.assert_close(tg[1]["cond"], upsample(downsample(x, 2), 4))
    assert abs(tg[1]["start"].std().item() - 1) < 0.6  # pure noise


@pytest.mark.parametrize("tau,k", [(0.25, 2), (0.5, 2), (0.75, 2), (0.6, 4)])
def test_jump_restores_white_noise_at_expected_level(tau, k):
    """Upsample a noisy coarse state and jump: the result must be σ·up(x) + white noise of
    variance (1 − σ)², i.e. exactly what the next stage's training start point looks like."""
    n_coarse, n = 2, 2 * k
    sigma = max_start_level(tau, k)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, n_coarse, n_coarse, generator=g).expand(40_000, 1, n_coarse, n_coarse)
    eps = torch.randn(x.shape, generator=g)
    end = interpolate(eps, x, tau)  # a coarse stage's end state
    start = jump(end, tau, sigma, n, g)
    noise = (start - sigma * upsample(x, n)).reshape(40_000, -1).double()
    # mean zero, variance (1 − σ)² on every pixel, and no correlation inside blocks
    assert noise.mean(0).abs().max() < 0.02
    cov = torch.cov(noise.T) / (1 - sigma) ** 2
    assert (cov.diagonal() - 1).abs().max() < 0.04, cov.diagonal()
    off = cov - torch.diag(cov.diagonal())
    assert off.abs().max() < 0.04, off.abs().max()


def test_naive_upsample_would_be_wrong():
    """Sanity check of the test above: without the correction, pixels of a block are correlated."""
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(20_000, 1, 2, 2, generator=g)
    up = upsample(eps, 4).reshape(20_000, -1)
    cov = torch.cov(up.T)
    assert cov[0, 1] > 0.9  # same block: fully correlated


def test_extra_head_draws_share_the_condition_and_are_fresh():
    """stage_pair given the same previous end state: same jump statistics, new noise."""
    from ecar.flow.pyramid import stage_pair

    sched = StageSchedule.build([2, 4, 8], [0.5, 0.8])
    x = torch.randn(4, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    tg = stage_targets(x, sched, g)
    xs = [t["clean"] for t in tg]
    for s in (1, 2):
        a, b = stage_pair(xs, s, sched, tg[s - 1]["end"], g)
        assert not torch.allclose(a, tg[s]["start"])  # a fresh draw
        r = sched.sigma[s] / sched.tau[s - 1]  # ... that the previous end state still pins down
        torch.testing.assert_close(downsample(a, sched.sizes[s - 1]), r * tg[s - 1]["end"],
                                   rtol=1e-4, atol=1e-5)
        eps = (a - sched.sigma[s] * upsample(xs[s - 1], sched.sizes[s])) / (1 - sched.sigma[s])
        torch.testing.assert_close(b, interpolate(eps, xs[s], sched.tau[s]))


def test_head_batch_mul_trains_on_several_draws_per_ar_pass():
    from ecar.build import LatentSpec, build_model
    from ecar.config import load_config

    def loss(mul: int, seed: int = 0) -> dict:
        cfg = load_config("configs/digits_ecar.yaml", ["model.hidden=32", "model.heads=2", "model.depth=1",
                                                      f"model.head_batch_mul={mul}"])
        torch.manual_seed(0)
        model, method = build_model(cfg, LatentSpec(1, 16, 10))
        obj = method.objective(model, cfg.flow)
        x, y = torch.randn(5, 1, 16, 16), torch.arange(5)
        return obj(x, y, torch.Generator().manual_seed(seed))

    one, three = loss(1), loss(3)
    assert torch.isfinite(three["loss"]) and three["loss"].requires_grad
    three["loss"].backward()
    assert one["loss"].item() != three["loss"].item()  # more draws: a different estimate
    with pytest.raises(Exception, match="head_batch_mul"):
        loss(0)


def test_x_prediction_velocity_is_the_straight_path_velocity():
    from ecar.models.heads import x_to_velocity

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    for u in (torch.tensor(0.3), torch.tensor([0.0, 0.5, 0.9]), torch.rand(3, 5, generator=g) * 0.9):
        uu = u.reshape(*u.shape, *([1] * (3 - u.dim()))) if u.dim() else u
        x_u = (1 - uu) * a + uu * b
        torch.testing.assert_close(x_to_velocity(b, x_u, u), b - a, atol=1e-5, rtol=1e-4)
    # near the end the divisor is clamped, so the velocity stays bounded
    v = x_to_velocity(b, a, torch.tensor(1.0))
    torch.testing.assert_close(v, (b - a) / 0.05)


def test_x_prediction_trains_and_samples():
    from ecar.build import LatentSpec, build_model
    from ecar.config import ConfigError, load_config

    cfg = load_config("configs/digits_ecar.yaml", ["model.hidden=32", "model.heads=2", "model.depth=1",
                                                  "model.prediction=x", "model.head=transformer"])
    torch.manual_seed(0)
    model, method = build_model(cfg, LatentSpec(1, 16, 10))
    losses = method.objective(model, cfg.flow)(torch.randn(4, 1, 16, 16), torch.arange(4), torch.Generator().manual_seed(1))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    out = method.generate(model.eval(), cfg.sample, torch.arange(3), torch.Generator().manual_seed(2))
    assert torch.isfinite(out["latents"]).all()
    with pytest.raises(ConfigError, match="prediction"):
        load_config("configs/digits_ecar.yaml", ["model.prediction=eps"])
