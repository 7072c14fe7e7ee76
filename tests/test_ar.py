"""AR (MAR's causal raster-order variant) as a method: causality, the ragged KV cache against
the full pass, the Gaussian-chain sampler against plain Euler–Maruyama, settings and flags,
and the CLI with a draft (speculative decoding; its exactness is tested in
test_speculative.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ecar.build import LatentSpec
from ecar.cli import main as cli_main
from ecar.config import ConfigError, load_config
from ecar.pipeline import check_draft_pair
from ecar.methods import METHODS, apply_sample_overrides, method_of, sampler_flags
from ecar.methods.ar import AR_METHOD, ARSampleConfig
from ecar.samplers import euler_maruyama
from ecar.samplers.chain import GaussianChain

ROOT = Path(__file__).resolve().parents[1]


def _model(seed: int = 0):
    cfg = load_config(None, ["model.name=ar-tiny"])
    model = AR_METHOD.build(cfg.model, LatentSpec(1, 8, 10))  # 16 tokens of dim 4
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def test_ar_is_registered_with_its_own_settings():
    assert METHODS["ar"] is AR_METHOD and method_of("ar-tiny") is AR_METHOD
    cfg = load_config(ROOT / "configs" / "digits_ar.yaml")
    assert type(cfg.sample) is ARSampleConfig and cfg.sample.sampler == "euler_maruyama"
    draft = load_config(ROOT / "configs" / "digits_ar_draft.yaml")
    check_draft_pair(cfg, draft)  # the shipped pair fits
    assert draft.model.depth * 4 <= cfg.model.depth
    for bad in ({"gamma": -1}, {"gamma": "fast"}, {"residual_batch": 0}, {"temperature": -1.0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            apply_sample_overrides(cfg.sample, bad)
    assert apply_sample_overrides(cfg.sample, {"gamma": 0}).gamma == 0  # 0: plain decoding
    assert cfg.sample.gamma == "auto"
    gamma_flag = next(f for f in sampler_flags() if f.flag == "--gamma")
    assert gamma_flag.type("3") == 3 and gamma_flag.type("auto") == "auto"
    flags = {f.flag for f in sampler_flags()}
    assert {"--gamma", "--residual-batch"} <= flags


def test_conditions_are_causal_and_the_ragged_cache_matches_the_full_pass():
    model = _model()
    tokens, y = torch.randn(3, 16, 4), torch.tensor([1, 2, 10])
    full = model.condition(tokens, None, y)
    changed = tokens.clone()
    changed[:, 9:] += 1.0
    assert torch.equal(model.condition(changed, None, y)[:, :10], full[:, :10])  # z_i sees tokens < i
    assert not torch.allclose(model.condition(changed, None, y)[:, 10:], full[:, 10:])
    # ragged: every call covers 3 positions per row; rows keep 1, 2 and 3 of them, so rows 0
    # and 1 roll back (their later slots are written again before they are read)
    caches = model.new_caches(16 + 3)
    got = torch.zeros_like(full)
    n = torch.zeros(3, dtype=torch.long)
    while bool((n < 16).any()):
        pos = n[:, None] + torch.arange(3)
        prev = torch.cat([torch.zeros(3, 1, 4), tokens], 1)[torch.arange(3)[:, None], pos.clamp(max=16)]
        z = model.step(prev, pos, y, caches)
        keep = torch.minimum(torch.tensor([1, 2, 3]), 16 - n)
        for b in range(3):
            got[b, n[b]:n[b] + keep[b]] = z[b, :keep[b]]
        n = n + keep
    assert torch.allclose(got, full, atol=1e-5)


def test_the_gaussian_chain_is_euler_maruyama_with_a_stochastic_last_step():
    """Same drift as the shared Euler–Maruyama: with the same draws the chain equals it up to
    the last step's noise, which the chain keeps (σ_K = √s·Δ > 0)."""
    chain = GaussianChain(5, noise_scale=1.0, temperature=1.0)

    def v(x, t):
        return -x + 0.5 * (t[..., None] if t.dim() else t)

    noise = torch.randn(4, 1, 3, generator=torch.Generator().manual_seed(0))
    ours, path, _ = chain.sample(v, noise, torch.Generator().manual_seed(1), record=True)
    shared = euler_maruyama(v, noise, chain.grid(), torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    for _ in range(4):  # the draws both samplers share
        torch.randn(noise.shape, generator=g)
    last = torch.randn(noise.shape, generator=g)
    assert chain.stds()[-1] == pytest.approx(0.2)
    assert torch.allclose(ours, shared + 0.2 * last, atol=1e-6)
    assert torch.equal(path[:, :, -1], ours) and torch.equal(path[:, :, 0], noise)


def test_plain_sampling_is_seeded_and_guidance_one_is_the_conditional_chain():
    model = _model()
    sample = ARSampleConfig(steps=3, cfg=1.0)
    labels = torch.arange(4)
    a = AR_METHOD.generate(model, sample, labels, torch.Generator().manual_seed(0))["latents"]
    b = AR_METHOD.generate(model, sample, labels, torch.Generator().manual_seed(0))["latents"]
    assert torch.equal(a, b) and a.shape == (4, 1, 8, 8) and bool(torch.isfinite(a).all())
    g = AR_METHOD.generate(model, ARSampleConfig(steps=3, cfg=3.0), labels, torch.Generator().manual_seed(0))
    assert not torch.allclose(g["latents"], a)
    stages = AR_METHOD.generate(model, sample, labels, torch.Generator().manual_seed(0), return_stages=True)["stages"]
    assert len(stages) == 16 and torch.equal(stages[-1], a)
    assert AR_METHOD.step_counts(model, sample) == [3] * 16


TINY = ["model.hidden=32", "model.heads=2", "model.head_width=32", "model.head_depth=1",
        "train.batch_size=8", "train.max_steps=3", "train.tensorboard=false", "train.log_every=1",
        "train.warmup_steps=1", "sample.steps=2"]


def test_cli_samples_with_a_draft_and_refuses_a_mismatched_pair(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "cache"))
    target, draft, other = tmp_path / "t", tmp_path / "d", tmp_path / "o"
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_ar.yaml"), "--out", str(target),
                     *TINY, "model.depth=2"]) == 0
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_ar_draft.yaml"),
                     "--out", str(draft), *TINY]) == 0
    capsys.readouterr()
    grid = tmp_path / "g.png"
    assert cli_main(["sample", "--ckpt", str(target), "--draft", str(draft), "--gamma", "3", "--n", "4",
                     "--out", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "acceptance rate" in out and "tokens per target pass" in out and grid.exists()
    assert cli_main(["sample", "--ckpt", str(target), "--draft", str(target), "--n", "2", "--out",
                     str(grid), "--overwrite"]) == 0
    assert "acceptance rate 1.000" in capsys.readouterr().out
    # a draft of another token layout (patch 4) is a usage error that names the field
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_ar_draft.yaml"),
                     "--out", str(other), *TINY, "model.patch=4"]) == 0
    capsys.readouterr()
    assert cli_main(["sample", "--ckpt", str(target), "--draft", str(other), "--n", "2", "--out",
                     str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "model.patch" in err and not (tmp_path / "x.png").exists()
    # the ODE sampler has no path density: a usage error that says which sampler to use
    assert cli_main(["sample", "--ckpt", str(target), "--draft", str(draft), "--sampler", "euler", "--n", "2",
                     "--out", str(tmp_path / "y.png")]) == 2
    assert "euler_maruyama" in capsys.readouterr().err


def test_bench_reports_speculative_statistics_with_a_draft(tmp_path, monkeypatch):
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "cache"))
    target, draft = tmp_path / "t", tmp_path / "d"
    for run, recipe, depth in ((target, "digits_ar.yaml", 2), (draft, "digits_ar_draft.yaml", 1)):
        assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / recipe), "--out", str(run),
                         *TINY, f"model.depth={depth}"]) == 0
    out = tmp_path / "bench"
    assert cli_main(["bench", "--ckpts", str(target), "--draft", str(draft), "--n-eval", "8", "--sweep", "1",
                     "--seeds", "0", "--quiet", "--out", str(out)]) == 0
    spec = json.loads((out / "bench.json").read_text())["meta"]["speculative"]["t"]
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and spec["tokens"] == 8 * 64 and spec["n"] == 8
    assert spec["target_passes"] > 0 and spec["choices"] and all(c["gamma"] in range(7) for c in spec["choices"])
    if all(c["gamma"] >= 1 for c in spec["choices"]):  # a separate draft passes every proposal after the pilot
        assert spec["draft_passes"] >= spec["target_passes"] - 2 * len(spec["choices"])
    assert math.isfinite(spec["fid"]) and spec["seconds_per_image"] > 0
