"""The head's x-free terms computed once per token (issue 28, part 1): the per-token flow
head's time embedding and adaLN modulations at every grid time in one call, then only the
blocks' bodies per chain step. Plain decoding with them draws the same samples as the earlier
path (one full head call per step) from the same seeds, up to float rounding."""

from __future__ import annotations

import pytest
import torch

from ecar.build import LatentSpec
from ecar.config import load_config
from ecar.engine.causal import GuidedCausal, generate_causal
from ecar.methods.ar import AR_METHOD
from ecar.models.heads import HEAD_CONDS, TokenHead


def _random(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return module.eval()


@pytest.mark.parametrize("cond", HEAD_CONDS)
@pytest.mark.parametrize("guided", [False, True])
def test_chain_means_equal_the_full_head_call_at_every_step(cond, guided):
    head = _random(TokenHead(4, 24, 32, 2, kind="mlp", cond=cond), 0)
    g = torch.Generator().manual_seed(1)
    halves = 2 if guided else 1
    zc = head.project(torch.randn(halves * 3, 5, 24, generator=g))
    times = torch.tensor([0.0, 0.3, 0.55, 0.9])
    a, b = torch.tensor([0.9, 0.8, 0.7, 0.95]), torch.tensor([0.2, 0.3, 0.4, 0.1])
    w = torch.rand(3, 5, 1, generator=g) * 3 if guided else None
    with torch.no_grad():
        m = head.chain_means(zc.unflatten(0, (2, -1)) if guided else zc, times, a, b, w)
        for k in range(len(times)):
            x = torch.randn(3, 5, 4, generator=g)
            t = times[k].expand(halves * 3, 5)
            v = head(torch.cat([x] * halves), t, zc)
            if guided:
                vc, vu = v.chunk(2)
                v = vu + w * (vc - vu)
            assert torch.allclose(m(x, k), a[k] * x + b[k] * v, atol=1e-5)


def test_time_embedding_once_per_distinct_time_equals_one_per_row():
    head = _random(TokenHead(4, 24, 32, 2), 2)
    u = torch.tensor([0.1, 0.5, 0.9]).repeat(50)
    with torch.no_grad():
        assert torch.allclose(head.time_embedding(u), head.t_embed(u), atol=1e-6)


@pytest.mark.parametrize("chain", [(), ("sample.time_power=2", "sample.chain_end=0.8")])
def test_plain_decoding_draws_the_samples_of_one_head_call_per_step(chain):
    """generate_causal (terms once per token) against the earlier loop — a full guided head call
    at every chain step, GaussianChain.sample — from the same seed: equal up to rounding."""
    cfg = load_config(None, ["model.name=ar-tiny", "sample.steps=5", "sample.cfg=2.0", *chain])
    model = _random(AR_METHOD.build(cfg.model, LatentSpec(1, 8, 10)), 3)
    settings = AR_METHOD.loop_settings(model, cfg.sample)
    labels = torch.arange(12) % 10
    new = generate_causal(model, labels, settings, torch.Generator().manual_seed(5))["latents"]

    B, N, D = 12, model.num_tokens, model.token_dim
    g = torch.Generator().manual_seed(5)
    net, c = GuidedCausal(model, labels, settings.guidance, N), settings.chain()
    tokens, context = torch.zeros(B, N, D), torch.zeros(B, N, D)
    with torch.no_grad():
        for i in range(N):
            pos = torch.full((B, 1), i, dtype=torch.long)
            v = net.velocity(net.condition(context[:, i - 1:i] if i else context[:, :1], pos), pos)
            x = c.sample(v, torch.randn((B, 1, D), generator=g), g)[0]
            context[:, i] = x[:, 0]
            tokens[:, i] = c.finish(v, x)[:, 0]
    old = model.latent(tokens)
    assert (new - old).abs().max() < 1e-4
    assert new.abs().max() > 0.1  # not trivially equal
