"""Autoencoders: identity round-trip; pretrained TAEF2 loading, shapes, reconstruction, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ecar.autoencoders import IdentityAutoencoder, build_autoencoder
from ecar.config import AutoencoderConfig, ConfigError

WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "taef2"
HAVE_WEIGHTS = (WEIGHTS / "taef2_encoder.safetensors").is_file() and (
    WEIGHTS / "taef2_decoder.safetensors"
).is_file()
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS,
    reason=f"TAEF2 weights not found at {WEIGHTS} (shared/weights/taef2 beside the repo)",
)


def smooth_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    """(1, 3, size, size) in [-1, 1]: colour gradients plus a few soft-edged coloured discs."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack([xx, yy, 0.5 * (1 - xx) + 0.25 * yy + 0.2])
    for _ in range(4):
        cx, cy = (torch.rand(2, generator=g) * 0.8 + 0.1).tolist()
        r = 0.1 + 0.15 * torch.rand(1, generator=g).item()
        colour = torch.rand(3, 1, 1, generator=g)
        d = ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()
        mask = torch.sigmoid((r - d) * size / 2)  # edge ~2 px wide
        img = img * (1 - mask) + colour * mask
    return (img.clamp(0, 1) * 2 - 1).unsqueeze(0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a.clamp(-1, 1) - b) ** 2).mean().item()
    return 10 * math.log10(4.0 / mse)


# --------------------------------------------------------------------------- identity


def test_identity_round_trip():
    ae = build_autoencoder(AutoencoderConfig(name="identity", scale=2.0), 3)
    assert isinstance(ae, IdentityAutoencoder)
    assert ae.downsample == 1 and ae.latent_channels() == 3 and ae.latent_size(32) == 32
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    z = ae.encode(x)
    assert torch.allclose(z, 2 * x)
    assert torch.allclose(ae.decode(z), x)


def test_unknown_autoencoder_name():
    with pytest.raises(ConfigError, match="identity or taef2"):
        build_autoencoder(AutoencoderConfig(name="vae-nope"), 3)


# --------------------------------------------------------------------------- TAEF2 (weights)


@pytest.fixture(scope="module")
def taef2():
    return build_autoencoder(AutoencoderConfig(name="taef2", path=str(WEIGHTS), scale=1.0), 3)


@needs_weights
def test_taef2_loads_frozen(taef2):
    from ecar.autoencoders.taef2 import TAEF2Autoencoder

    assert isinstance(taef2, TAEF2Autoencoder)
    assert taef2.downsample == 8
    assert taef2.latent_channels() == 32 and taef2.latent_size(256) == 32
    assert not any(p.requires_grad for p in taef2.parameters())
    taef2.train()
    assert not taef2.training and not any(m.training for m in taef2.modules())


@needs_weights
def test_taef2_shapes_and_reconstruction(taef2):
    from ecar.autoencoders.taef2 import TAEF2Autoencoder

    x = smooth_image(64)
    with torch.no_grad():
        z = taef2.encode(x)
        assert z.shape == (1, 32, 8, 8)
        rec = taef2.decode(z)
    assert rec.shape == x.shape
    good = psnr(rec, x)
    assert good > 20.0, f"pretrained TAEF2 reconstructs at only {good:.1f} dB"

    torch.manual_seed(0)
    untrained = TAEF2Autoencoder(scale=1.0)  # random init, no weights
    with torch.no_grad():
        bad = psnr(untrained.decode(untrained.encode(x)), x)
    assert bad < 12.0 and good - bad > 10.0, (good, bad)

    # scale multiplies latents on encode and is divided out on decode
    scaled = TAEF2Autoencoder(scale=2.0)
    scaled.load_state_dict(taef2.state_dict())
    with torch.no_grad():
        z2 = scaled.encode(x)
        assert torch.allclose(z2, 2 * z, atol=1e-5)
        assert torch.allclose(scaled.decode(z2), rec, atol=1e-4)


@needs_weights
def test_taef2_path_from_env_and_per_user_dir(monkeypatch, tmp_path):
    from ecar.autoencoders.taef2 import resolve_weights_dir

    monkeypatch.setenv("ECAR_TAEF2_PATH", str(WEIGHTS))
    assert resolve_weights_dir(None) == WEIGHTS
    monkeypatch.delenv("ECAR_TAEF2_PATH")
    # the per-user location under ecar's cache root, wherever the command runs
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "cache"))
    user = tmp_path / "cache" / "weights" / "taef2"
    user.mkdir(parents=True)
    for name in ("taef2_encoder.safetensors", "taef2_decoder.safetensors"):
        (user / name).symlink_to(WEIGHTS / name)
    monkeypatch.chdir(tmp_path)
    assert resolve_weights_dir(None) == user
    assert build_autoencoder(AutoencoderConfig(name="taef2"), 3).weights_dir == user


def test_cache_root_order(monkeypatch, tmp_path):
    from ecar.paths import cache_root, weights_dir

    monkeypatch.delenv("ECAR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "ecar"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "ecar"
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "mine"))
    assert weights_dir("taef2") == tmp_path / "mine" / "weights" / "taef2"


@needs_weights
def test_taef2_loads_upstream_pth_files(tmp_path, taef2):
    """Upstream ships .pth state dicts: they load (weights_only) and give the same network."""
    from safetensors.torch import load_file

    for name in ("taef2_encoder", "taef2_decoder"):
        torch.save(load_file(str(WEIGHTS / f"{name}.safetensors")), tmp_path / f"{name}.pth")
    from_pth = build_autoencoder(AutoencoderConfig(name="taef2", path=str(tmp_path), scale=1.0), 3)
    x = smooth_image(32)
    with torch.no_grad():
        assert torch.equal(from_pth.encode(x), taef2.encode(x))
    # a pickle that is not a plain state dict is refused, never executed
    torch.save({"0.weight": torch.zeros(1), "obj": object()}, tmp_path / "taef2_encoder.pth")
    with pytest.raises(RuntimeError, match="cannot read TAEF2 weights"):
        build_autoencoder(AutoencoderConfig(name="taef2", path=str(tmp_path)), 3)


def test_product_code_never_looks_beside_the_repository():
    """Users have no ../shared: product code must not look there (tests and CI may)."""
    src = Path(__file__).resolve().parents[1] / "src" / "ecar"
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py") if '"shared"' in p.read_text()
                 or "../shared" in p.read_text()]
    assert offenders == []


# --------------------------------------------------------------------------- TAEF2 (errors)


def test_taef2_missing_path_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("ECAR_TAEF2_PATH", raising=False)
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ConfigError, match="autoencoder.path"):
        build_autoencoder(AutoencoderConfig(name="taef2", path=str(tmp_path / "nope")), 3)
    with pytest.raises(ConfigError, match="taef2_encoder.safetensors"):
        build_autoencoder(AutoencoderConfig(name="taef2", path=str(tmp_path)), 3)
    monkeypatch.setenv("ECAR_TAEF2_PATH", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="ECAR_TAEF2_PATH"):
        build_autoencoder(AutoencoderConfig(name="taef2"), 3)
    monkeypatch.delenv("ECAR_TAEF2_PATH")
    # nothing configured: the message names the upstream project, its licence and where to put the files
    with pytest.raises(ConfigError) as e:
        build_autoencoder(AutoencoderConfig(name="taef2"), 3)
    msg = str(e.value)
    assert "madebyollin/taesd" in msg and "MIT" in msg
    assert str(tmp_path / "empty-cache" / "weights" / "taef2") in msg


def test_taef2_needs_rgb(tmp_path):
    with pytest.raises(ConfigError, match="data.channels=3"):
        build_autoencoder(AutoencoderConfig(name="taef2", path=str(tmp_path)), 1)


def test_taef2_mismatched_or_corrupt_weights(tmp_path):
    from safetensors.torch import save_file

    save_file({"0.weight": torch.zeros(64, 4, 3, 3), "99.bias": torch.zeros(3)},
              str(tmp_path / "taef2_encoder.safetensors"))
    (tmp_path / "taef2_decoder.safetensors").write_bytes(b"not a safetensors file")
    cfg = AutoencoderConfig(name="taef2", path=str(tmp_path))
    match = "does not hold TAEF2 weights.*shape mismatch.*missing tensors.*unexpected"
    with pytest.raises(RuntimeError, match=match):
        build_autoencoder(cfg, 3)
    from ecar.autoencoders.taef2 import TAEF2Autoencoder

    good = TAEF2Autoencoder().encoder.state_dict()
    save_file({k: v.contiguous() for k, v in good.items()},
              str(tmp_path / "taef2_encoder.safetensors"))
    with pytest.raises(RuntimeError, match="cannot read TAEF2 weights"):
        build_autoencoder(cfg, 3)


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("recipe", ["imagenet256_dit.yaml", "imagenet256_ecar.yaml"])
def test_imagenet_recipes_load(recipe):
    from ecar.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / recipe)
    assert cfg.autoencoder.name == "taef2" and cfg.autoencoder.path is None
    assert cfg.data.resolution == 256 and cfg.data.channels == 3
    tokens = cfg.data.resolution // 8 // cfg.model.patch
    assert tokens == 16
    stage_steps = getattr(cfg.sample, "stage_steps", None)  # E-CAR's setting
    if stage_steps is not None:  # E-CAR: grids 1, 2, 4, 8, 16 -> one entry per stage
        assert cfg.model.stages is None
        assert len(stage_steps) == int(math.log2(tokens)) + 1
