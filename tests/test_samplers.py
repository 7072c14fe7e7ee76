import math

import pytest
import torch

from ecar.samplers import euler, euler_maruyama, guided, guidance_scale, heun, time_grid


def _linear_field(a: float):
    # dx/dt = a·x + t  has the solution x(t) = (x0 + 1/a²)·e^{at} − t/a − 1/a²
    return lambda x, t: a * x + t


def _exact(x0, a, t=1.0):
    return (x0 + 1 / a**2) * math.exp(a * t) - t / a - 1 / a**2


@pytest.mark.parametrize("method,order", [(euler, 1), (heun, 2)])
def test_order_of_accuracy(method, order):
    a = 1.5
    x0 = torch.tensor([0.3, -1.0], dtype=torch.float64)
    exact = torch.tensor([_exact(v, a) for v in x0.tolist()], dtype=torch.float64)
    errs = []
    for n in (20, 40, 80):
        grid = time_grid(n).double()
        errs.append((method(_linear_field(a), x0, grid) - exact).abs().max().item())
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    for r in rates:
        assert abs(r - order) < 0.15, (errs, rates)


def _gaussian_velocity(mu: float, s: float):
    """Exact velocity of the linear path from N(0,1) to N(mu, s²)."""

    def v(x, t):
        t = float(t)
        var = (1 - t) ** 2 + (t * s) ** 2
        centred = x - t * mu
        return mu + (t * s**2 - (1 - t)) / var * centred

    return v


def test_ode_transports_gaussian():
    mu, s = 2.0, 0.5
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(200_000, generator=g, dtype=torch.float64)
    x1 = heun(_gaussian_velocity(mu, s), x0, time_grid(50).double())
    assert abs(x1.mean().item() - mu) < 0.01 and abs(x1.std().item() - s) < 0.01


def test_euler_maruyama_marginals_and_zero_noise():
    mu, s = -1.0, 0.7
    v = _gaussian_velocity(mu, s)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(200_000, generator=g, dtype=torch.float64)
    grid = time_grid(400).double()
    x1 = euler_maruyama(v, x0, grid, generator=g, noise_scale=1.0)
    assert abs(x1.mean().item() - mu) < 0.02 and abs(x1.std().item() - s) < 0.02
    # no noise: identical to Euler
    assert torch.equal(euler_maruyama(v, x0[:100], grid, noise_scale=0.0), euler(v, x0[:100], grid))


def test_guidance_scale_one_is_exactly_conditional():
    def model_fn(x, t, c):
        return torch.tanh(x * c[:, None, None, None] + t)

    x = torch.randn(5, 3, 4, 4)
    cond, uncond = torch.arange(5.0), torch.zeros(5)
    v = guided(model_fn, cond, uncond, lambda t: 1.0)(x, torch.tensor(0.3))
    assert torch.equal(v, model_fn(x, torch.tensor(0.3), cond))


def test_guidance_mixes_every_channel():
    def model_fn(x, t, c):
        return x * c[:, None, None, None]

    x = torch.randn(2, 4, 3, 3)
    cond, uncond = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])
    v = guided(model_fn, cond, uncond, lambda t: 4.0)(x, torch.tensor(0.5))
    expected = x + 4.0 * (x * cond[:, None, None, None] - x)
    torch.testing.assert_close(v, expected)
    assert (v != x).all()  # every channel moved


def test_guidance_schedules():
    assert guidance_scale(3.0, "constant", 0.2) == 3.0
    assert guidance_scale(3.0, "linear", 0.0) == 1.0
    assert guidance_scale(3.0, "linear", 1.0) == 3.0
    assert guidance_scale(3.0, "linear", 0.5) == 2.0


def test_guidance_interval_limits_where_guidance_applies():
    assert guidance_scale(3.0, "constant", 0.2, [0.0, 0.5]) == 3.0
    assert guidance_scale(3.0, "constant", 0.5, [0.0, 0.5]) == 3.0
    assert guidance_scale(3.0, "constant", 0.6, [0.0, 0.5]) == 1.0
    assert guidance_scale(3.0, "linear", 0.1, [0.3, 1.0]) == 1.0
    assert guidance_scale(3.0, "linear", 0.5, [0.3, 1.0]) == 2.0
