"""The speculative draft *head* (docs/speculative.md, "A draft head on the target's
transformer"): the mixture head's closed-form velocity against numerical integration, the
draft built from a target (transformer shared bit for bit, so the engine reuses the target's
passes), its distillation lowering the path KL, exactness of speculative decoding with shared
passes (KS against plain sampling), and ``ecar draft`` end to end with its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy import stats as sps

from ecar.cli import main as cli_main
from ecar.methods.ar import AR_METHOD
from ecar.models.ar import shares_transformer
from ecar.models.heads import MixtureHead
from ecar.methods.ar.draft import distill_draft_head, make_draft_head

from test_speculative import ALPHA, _net, trained_pair  # noqa: F401  (trained_pair: a fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 0.95])
def test_mixture_velocity_is_the_exact_flow_velocity_of_the_mixture(t):
    """1-D, 3 components: v(x, t) = E[x1 − x0 | x_t = x] by quadrature over x1 (x0 is then
    (x − t·x1)/(1 − t), and p(x1 | x_t) ∝ p(x1)·N(x; t·x1, (1 − t)²))."""
    head = MixtureHead(1, 4, 16, 3).double().requires_grad_(False)
    torch.manual_seed(0)
    zc = head.project(torch.randn(1, 1, 4, dtype=torch.float64))
    logw, mu, var = (v[0, 0].reshape(3) for v in head._unpack(zc))
    x1 = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    prior = (logw[:, None] + torch.distributions.Normal(mu[:, None], var[:, None].sqrt()).log_prob(x1)).logsumexp(0)
    for x in (-1.3, 0.1, 0.8):
        if t == 0.0:
            expected = float((torch.exp(prior) * x1).sum() / torch.exp(prior).sum()) - x  # E[x1] − x0
        else:
            post = prior + torch.distributions.Normal(t * x1, 1 - t).log_prob(torch.tensor(x, dtype=torch.float64))
            wgt = torch.softmax(post, 0)
            expected = float((wgt * (x1 - (x - t * x1) / (1 - t))).sum())
        got = head(torch.full((1, 1, 1), x, dtype=torch.float64), torch.tensor(t, dtype=torch.float64), zc)
        assert float(got) == pytest.approx(expected, abs=1e-5)


def test_mixture_chain_means_and_step_chain_reproduce_the_velocity_and_the_chain():
    """The mixture head's precomputed step means equal a_k·x + b_k·v(x, t_k) of its forward
    velocity at every grid time, unguided and guided (halves mixed by their weights), and a
    chain run by ``sample_steps`` on them (guided, as in the engine) draws the same path as
    ``sample`` on the forward velocity from the same generator state."""
    from ecar.engine.causal import GuidedCausal
    from ecar.samplers.chain import GaussianChain

    head = MixtureHead(4, 8, 16, 5).requires_grad_(False)
    zc = head.project(torch.randn(2, 3, 2, 8))
    x = torch.randn(3, 2, 4)
    w = torch.rand(3, 2, 1) * 3
    chain = GaussianChain(6, 1.0, 0.9, 2.0, 0.9)
    grid, (a, b) = chain.grid(), chain.coefficients()
    plain = head.chain_means(zc[0], grid[:-1], a, b)
    guided = head.chain_means(zc, grid[:-1], a, b, w)
    for k in range(6):
        vc, vu = head(x, grid[k], zc[0]), head(x, grid[k], zc[1])
        assert torch.allclose(plain(x, k), a[k] * x + b[k] * vc, atol=1e-5)
        assert torch.allclose(guided(x, k), a[k] * x + b[k] * (vu + w * (vc - vu)), atol=1e-5)
    _, model = _net(1, "model.head_type=mixture", "model.mixture_components=5")
    net = GuidedCausal(model, torch.tensor([1, 7]), (2.0,) * model.num_tokens, model.num_tokens)
    z = net.condition(torch.zeros(2, 1, model.token_dim), torch.zeros(2, 1, dtype=torch.long))
    pos = torch.zeros(2, 1, dtype=torch.long)
    noise = torch.randn(2, 1, model.token_dim)
    a = chain.sample(net.velocity(z, pos), noise, torch.Generator().manual_seed(3), record=True)
    b = chain.sample_steps(net.step_means(z, pos, chain), noise, torch.Generator().manual_seed(3), record=True)
    for u, v in zip(a, b):
        assert torch.allclose(u, v, atol=1e-5)


def test_draft_head_shares_the_targets_transformer_and_nothing_else():
    cfg, target = _net(1)
    draft, dcfg = make_draft_head(target, cfg.model, components=4, width=32)
    assert dcfg.head_type == "mixture" and isinstance(draft.head, MixtureHead)
    assert shares_transformer(target, draft)
    assert all(p.requires_grad == n.startswith("head.") for n, p in draft.named_parameters())
    other = make_draft_head(target, cfg.model, 4, 32)[0]
    with torch.no_grad():
        other.blocks[0].attn.qkv.weight[0, 0] += 1e-3
    assert not shares_transformer(target, other)


@pytest.fixture(scope="module")
def distilled(trained_pair):
    """The tiny target trained on digits (test_speculative.py) and a draft head distilled on
    its chains (seconds)."""
    loaded = trained_pair[0]
    cfg, target = loaded.cfg, loaded.model
    draft, _ = make_draft_head(target, cfg.model, components=4, width=64)
    res = distill_draft_head(target, draft, cfg.sample, steps=150, batch=16, pool=256, seed=0)
    return cfg, target, draft, res


def test_distillation_lowers_the_path_kl(distilled):
    cfg, target, draft, res = distilled
    first, last = sum(res["losses"][:10]) / 10, sum(res["losses"][-10:]) / 10
    assert last < 0.25 * first
    assert len(res["held_out_kl_per_step"]) == cfg.sample.steps
    assert 0.0 < res["held_out_acceptance_proxy"] <= 1.0


@pytest.mark.parametrize("verify", ["path", "step"])
def test_speculative_with_a_draft_head_samples_the_target(distilled, verify):
    """Shared passes (the draft head proposes from the target's own pass): the target's tokens
    by speculative and by plain sampling are indistinguishable (KS on all 16 coordinates,
    Bonferroni); no draft pass is made, and rejections do happen."""
    cfg, target, draft, _ = distilled
    sample = AR_METHOD.sample_config_cls(**{**vars(cfg.sample), "verify": verify})
    n = 4000
    labels = torch.arange(n) % 10
    spec = AR_METHOD.drafting.speculative(target, draft, sample, labels, torch.Generator().manual_seed(0))
    plain = AR_METHOD.generate(target, sample, labels, torch.Generator().manual_seed(1))["latents"]
    st = spec["stats"].as_dict()
    assert st["draft_passes"] == 0 and st["draft_head_calls"] > 0
    assert 0.05 < st["acceptance_rate"] < 0.99 and st["residual_tokens"] > 0
    p = [sps.ks_2samp(spec["latents"].reshape(n, -1)[:, i].numpy(), plain.reshape(n, -1)[:, i].numpy()).pvalue
         for i in range(16)]
    assert min(p) > ALPHA / 16


TINY = ["model.hidden=32", "model.heads=2", "model.head_width=32", "model.head_depth=1", "model.depth=1",
        "train.batch_size=8", "train.max_steps=3", "train.tensorboard=false", "train.log_every=1",
        "train.warmup_steps=1", "sample.steps=2"]


def test_ecar_draft_makes_a_draft_that_ecar_sample_uses(tmp_path, capsys):
    target, draft = tmp_path / "t", tmp_path / "d"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_ar.yaml"), "--out", str(target),
                     *TINY]) == 0
    assert cli_main(["draft", "--ckpt", str(target), "--out", str(draft), "--distill-steps", "4", "--pool", "8",
                     "--batch", "2", "--components", "2", "--width", "16", "--quiet"]) == 0
    report = json.loads((draft / "draft.json").read_text())
    assert len(report["losses"]) == 4 and len(report["held_out_kl_per_step"]) == 2
    capsys.readouterr()
    assert cli_main(["sample", "--ckpt", str(target), "--draft", str(draft), "--n", "4",
                     "--out", str(tmp_path / "g.png")]) == 0
    printed = capsys.readouterr().out
    assert "acceptance rate" in printed and "draft: 0 passes" in printed
    # a second draft into the same run directory is refused, the first one kept
    capsys.readouterr()
    assert cli_main(["draft", "--ckpt", str(target), "--out", str(draft), "--distill-steps", "1", "--quiet"]) == 2
    assert "choose a new one for the draft" in capsys.readouterr().err
    assert json.loads((draft / "draft.json").read_text()) == report
    # a draft for an ODE sampler is refused before anything is written
    assert cli_main(["draft", "--ckpt", str(target), "--out", str(tmp_path / "d2"), "--sampler", "euler", "--quiet"]) == 2
    assert "euler_maruyama" in capsys.readouterr().err and not (tmp_path / "d2").exists()
    for flag in ("--distill-steps", "--batch", "--components", "--width", "--pool"):
        assert cli_main(["draft", "--ckpt", str(target), "--out", str(tmp_path / "d2"), flag, "0", "--quiet"]) == 2
        assert f"{flag}=0 is not valid" in capsys.readouterr().err and not (tmp_path / "d2").exists()


def test_ecar_draft_refuses_a_target_whose_method_cannot_be_drafted(tmp_path, capsys):
    run = tmp_path / "dit"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_dit.yaml"), "--out", str(run),
                     "train.max_steps=1", "train.tensorboard=false", "model.depth=1", "model.hidden=32",
                     "model.heads=2"]) == 0
    assert cli_main(["draft", "--ckpt", str(run), "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is a dit checkpoint, a method that cannot be drafted" in err and "methods that can: ar" in err
    assert not (tmp_path / "d").exists()
