import math
import threading

import pytest
import torch

from ecar.samplers import euler, euler_maruyama, guided, guidance_scale, heun, stop_when, time_grid
from ecar.samplers.chain import GaussianChain


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


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", [euler, heun, euler_maruyama])
def test_stop_when_stops_every_integrator_at_the_next_step(method):
    """Issue 29: a cancellation set during step k stops the loop before step k + 1; outside
    the block, or in another thread, the check is not called."""
    calls, started = [], []

    def velocity(x, t):
        calls.append(float(t))
        return -x

    def check():
        started.append(len(started))
        if len(started) > 3:  # cancelled while step 3 ran: step 4 must not start
            raise _Stop

    with stop_when(check), pytest.raises(_Stop):
        method(velocity, torch.ones(2, 3), time_grid(10), torch.Generator().manual_seed(0))
    per_step = 2 if method is heun else 1
    assert len(started) == 4 and len(calls) == 3 * per_step
    calls.clear()
    method(velocity, torch.ones(2, 3), time_grid(10), torch.Generator().manual_seed(0))  # no block: all 10
    assert len(calls) == 10 * per_step - (1 if method is heun else 0) and len(started) == 4
    # the Gaussian chain of the causal AR method checks too
    started.clear()
    chain = GaussianChain(8, 1.0, 1.0, 1.0, 1.0)
    with stop_when(check), pytest.raises(_Stop):
        chain.sample(lambda x, t: -x, torch.ones(1, 2, 3), torch.Generator().manual_seed(0))
    assert len(started) == 4


def test_stop_when_belongs_to_its_thread():
    def never(x, t):
        return -x

    seen = []
    with stop_when(lambda: seen.append("main")):
        t = threading.Thread(target=euler, args=(never, torch.ones(2), time_grid(5)))
        t.start()
        t.join()
        assert seen == []  # the other thread's steps did not call this thread's check
        euler(never, torch.ones(2), time_grid(5))
    assert seen == ["main"] * 5
