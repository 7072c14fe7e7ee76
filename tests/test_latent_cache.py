"""`ecar cache-latents` and `data.name=latents:DIR`: encode once, train, sample; resume; refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecar.autoencoders import AutoencoderConfig, build_autoencoder
from ecar.autoencoders.taef2 import TAEF2Autoencoder
from ecar.build import build_data
from ecar.cli import main
from ecar.config import DataConfig, load_config
from ecar.data import DataError, HFlipped, LatentCacheDataset, build_dataset
from ecar.eval.features import default_feature_net
from ecar.eval.reference import default_reference_split
from ecar.latent_cache import cache_latents

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT.parent / "shared" / "weights" / "taef2"
RECIPE = str(ROOT / "configs" / "imagefolder64_dit.yaml")
pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "taef2_encoder.safetensors").is_file(),
    reason=f"TAEF2 weights not found at {WEIGHTS} (shared/weights/taef2 beside the repo)",
)
RES = 16  # 2×2 latents of 32 channels


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """12 smooth 24×20 RGB images in two classes (resized and centre-cropped to 16)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c in ("cats", "dogs"):
        (root / c).mkdir()
        for i in range(6):
            base = rng.integers(0, 255, (3, 4, 3)).astype(np.uint8)
            img = Image.fromarray(base).resize((24, 20), Image.BILINEAR)
            img.save(root / c / f"{i}.png")
    return root


def _over(folder: Path, *extra: str) -> list[str]:
    return [f"data.name=imagefolder:{folder}", f"data.resolution={RES}", f"autoencoder.path={WEIGHTS}",
            "data.num_workers=0", *extra]


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_hflip_doubles_the_training_split_only(folder):
    data = DataConfig(name=f"imagefolder:{folder}", resolution=RES, hflip=True)
    ds = build_data(data, "train")
    base = build_dataset(data.name, resolution=RES)
    assert isinstance(ds, HFlipped) and len(ds) == 2 * len(base) == 24
    x, y = ds[len(base) + 3]
    assert torch.equal(x, base[3][0].flip(-1)) and y == base[3][1]
    assert ds.fingerprint() != base.fingerprint()
    assert not isinstance(build_data(data, "heldout"), HFlipped)
    assert not isinstance(build_data(data, "train", images=True), HFlipped)  # FID reference: real images


def test_cache_train_sample_end_to_end(folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["cache-latents", "--config", RECIPE, "--out", str(cache), "--shard-size", "8",
                 "--batch-size", "4", "--quiet", *_over(folder)]) == 0
    assert f"data.name=latents:{cache}" in capsys.readouterr().out
    m = json.loads((cache / "manifest.json").read_text())
    assert m["complete"] and m["count"] == 24 and m["num_shards"] == 3 and m["latent_shape"] == [32, 2, 2]
    assert m["autoencoder"]["name"] == "taef2" and m["autoencoder"]["scale"] == 1.2
    assert len(m["autoencoder"]["weights_sha256"]) == 64 and m["dataset"]["args"]["hflip"] is True

    # every cached latent is the autoencoder's encoding of the (mirrored) image
    ds = LatentCacheDataset(cache)
    images = build_data(DataConfig(name=f"imagefolder:{folder}", resolution=RES, hflip=True), "train")
    ae = build_autoencoder(AutoencoderConfig(name="taef2", path=str(WEIGHTS), scale=1.2), 3)
    assert len(ds) == len(images) and (ds.channels, ds.resolution, ds.num_classes) == (3, RES, 2)
    with torch.no_grad():
        for i in (0, 5, 13, 23):
            z, y = ds[i]
            assert y == images[i][1]
            torch.testing.assert_close(z, ae.encode(images[i][0][None])[0], rtol=0, atol=1e-5)  # batch of 4 vs 1

    # train on the cache, sample, and the FID reference is the image folder
    run = tmp_path / "run"
    tiny = ["model.hidden=32", "model.depth=1", "model.heads=2", "train.max_steps=2", "train.batch_size=4",
            "train.warmup_steps=1", "train.log_every=1", "train.tensorboard=false", "train.precision=fp32",
            "sample.steps=2", "train.ckpt_every=2", "train.sample_every=0", "data.num_workers=0"]
    assert main(["train", "--quiet", "--config", RECIPE, "--out", str(run), f"data.name=latents:{cache}",
                 f"data.resolution={RES}", f"autoencoder.path={WEIGHTS}", *tiny]) == 0
    grid = tmp_path / "grid.png"
    assert main(["sample", "--ckpt", str(run), "--n", "4", "--out", str(grid)]) == 0
    assert Image.open(grid).size[0] >= 2 * RES
    name = f"latents:{cache}"
    assert default_reference_split(name) == "train" and default_feature_net(name) == "inception"
    ref = build_data(DataConfig(name=name), "train", images=True)
    assert not getattr(ref, "yields_latents", False) and len(ref) == 12

    # the same recipe again: nothing to do, nothing rewritten
    before = _files(cache)
    assert main(["cache-latents", "--config", RECIPE, "--out", str(cache), "--shard-size", "8",
                 "--batch-size", "4", "--quiet", *_over(folder)]) == 0
    assert _files(cache) == before

    # another scale: refused, with the field named, nothing touched
    assert main(["cache-latents", "--config", RECIPE, "--out", str(cache), "--shard-size", "8",
                 "--batch-size", "4", "--quiet", *_over(folder, "autoencoder.scale=1.0")]) != 0
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "autoencoder.scale" in err and "Traceback" not in err
    assert _files(cache) == before
    # ... and training on the cache with another autoencoder scale is refused too
    assert main(["train", "--quiet", "--config", RECIPE, "--out", str(tmp_path / "run2"),
                 f"data.name=latents:{cache}", f"data.resolution={RES}", f"autoencoder.path={WEIGHTS}",
                 "autoencoder.scale=1.0", *tiny]) != 0
    assert "another autoencoder" in capsys.readouterr().err


def test_interrupted_encode_resumes_to_the_same_files(folder, tmp_path, monkeypatch):
    cfg = load_config(RECIPE, _over(folder))
    whole = tmp_path / "whole"
    cache_latents(cfg, whole, batch_size=4, shard_size=8, progress=False)

    real_encode = TAEF2Autoencoder.encode
    calls = {"n": 0}

    def failing_encode(self, x):
        calls["n"] += 1
        if calls["n"] == 4:  # shard 0's two batches, then one batch of shard 1
            raise RuntimeError("simulated crash")
        return real_encode(self, x)

    part = tmp_path / "part"
    monkeypatch.setattr(TAEF2Autoencoder, "encode", failing_encode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache_latents(cfg, part, batch_size=4, shard_size=8, progress=False)
    m = json.loads((part / "manifest.json").read_text())
    assert not m["complete"] and len(m["shards"]) == 1
    with pytest.raises(DataError, match="incomplete.*run the same"):
        LatentCacheDataset(part)
    monkeypatch.setattr(TAEF2Autoencoder, "encode", real_encode)
    cache_latents(cfg, part, batch_size=4, shard_size=8, progress=False)
    assert _files(part) == _files(whole)


def test_refuses_foreign_directories_and_bad_caches(folder, tmp_path):
    cfg = load_config(RECIPE, _over(folder))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not an \\(empty\\) latent-cache directory"):
        cache_latents(cfg, foreign, progress=False)
    assert _files(foreign) == {"notes.txt": b"keep me"}
    with pytest.raises(DataError, match="not a latent cache.*ecar cache-latents"):
        build_dataset(f"latents:{foreign}")
    with pytest.raises(DataError, match="training latents only"):
        build_dataset(f"latents:{foreign}", split="heldout")
