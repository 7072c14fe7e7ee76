"""Every registry entry: forward, backward, no NaN on a tiny input (parametrised from the registry)."""

import pytest
import torch

from ecar.build import LatentSpec, build_model
from ecar.config import load_config
from ecar.methods import model_names


def _tiny_batch(patch: int, stages: int = 2):
    size = patch * 2 ** (stages - 1)  # a 2×2 token grid: two stages for E-CAR
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, size, size, generator=g), torch.tensor([0, 3]), size


@pytest.mark.parametrize("name", model_names())
def test_registry_entry_forward_backward(name):
    torch.manual_seed(0)
    cfg = load_config(None, [f"model.name={name}"])
    x, y, size = _tiny_batch(cfg.model.patch)
    model, method = build_model(cfg, LatentSpec(3, size, 4))
    objective = method.objective(model, cfg.flow)
    losses = objective(x, y, torch.Generator().manual_seed(1))
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    sample = cfg.sample
    sample.steps, sample.cfg = 1, 1.5
    out = method.generate(model, sample, y, torch.Generator().manual_seed(2))
    assert out["latents"].shape == x.shape and torch.isfinite(out["latents"]).all()


def test_dit_patch_mismatch_is_clear():
    cfg = load_config(None, ["model.name=dit-tiny", "model.patch=3"])
    with pytest.raises(ValueError, match="not divisible"):
        build_model(cfg, LatentSpec(1, 16, 10))
