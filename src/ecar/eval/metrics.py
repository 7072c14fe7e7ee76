"""Sample-quality metrics computed on feature arrays: FID, Inception Score, precision/recall.

Every function here is a pure, deterministic function of numpy arrays. Feature extraction
(which network, which resolution) lives in :mod:`ecar.eval.features`; this module never
touches images.

Conventions
-----------
* Features are ``N×D`` arrays; they are promoted to float64 before any arithmetic.
* ``frechet_distance`` follows the usual FID definition (Heusel et al. 2017)
  ``||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})`` with the unbiased covariance
  (``np.cov(rowvar=False)``), as pytorch-fid and the TTUR reference code do.
  ``Tr((S1 S2)^{1/2})`` is computed as the sum of singular values of ``S1^{1/2} S2^{1/2}``
  (square roots of symmetric PSD matrices by ``eigh``): the same number as the trace of
  the square root of the symmetric PSD matrix ``S1^{1/2} S2 S1^{1/2}``, similar to
  ``S1 S2``, but with no complex parts, no failure on singular covariances (N < D) and no
  "add eps to the diagonal" retry.
* ``precision_recall`` is the improved precision/recall of Kynkäänniemi et al. 2019
  (arXiv 1904.06991) with k-NN hyperspheres in feature space.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "feature_stats",
    "frechet_distance",
    "fid_from_features",
    "inception_score",
    "precision_recall",
]


def _as_2d_float64(feats: np.ndarray, name: str) -> np.ndarray:
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().numpy()
    arr = np.asarray(feats, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array N×D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf values")
    return arr


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature set.

    Args:
        feats: ``N×D`` features, N ≥ 2.

    Returns:
        ``(mu, sigma)``: float64 arrays of shape ``D`` and ``D×D``
        (``sigma = np.cov(feats, rowvar=False)``, divisor N−1).
    """
    x = _as_2d_float64(feats, "feats")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples to estimate a covariance, got {x.shape[0]}")
    mu = x.mean(axis=0)
    sigma = np.atleast_2d(np.cov(x, rowvar=False))
    return mu, sigma


def _sym_psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh (negative eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(a)
    w = np.sqrt(np.clip(w, 0.0, None))
    return (v * w) @ v.T


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``Tr((S1 S2)^{1/2})`` for symmetric PSD S1, S2.

    ``S1 S2`` is similar to the symmetric PSD matrix ``M = S1^{1/2} S2 S1^{1/2} = A Aᵀ`` with
    ``A = S1^{1/2} S2^{1/2}``, so ``Tr((S1 S2)^{1/2}) = Tr(M^{1/2})`` = the sum of the singular
    values of ``A`` (its nuclear norm). Taking singular values of ``A`` rather than square
    roots of the eigenvalues of ``M`` avoids squaring the condition number: with
    rank-deficient covariances (N < D, common with 2048-d Inception features) the
    eigenvalue route leaves errors of order sqrt(eps)·||M|| per null direction, the SVD route
    of order eps·||A||. Swapping S1 and S2 transposes ``A``, which keeps its singular values,
    so the result is symmetric in its arguments.
    """
    a = _sym_psd_sqrt(sigma1) @ _sym_psd_sqrt(sigma2)
    sv = np.linalg.svd(a, compute_uv=False)
    return float(sv.sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``d² = ||mu1 - mu2||² + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})``, computed in float64.

    Args:
        mu1, mu2: means, shape ``D``.
        sigma1, sigma2: covariances, shape ``D×D`` (symmetric PSD).

    Returns:
        The squared Fréchet distance as a Python float (≥ 0; round-off negatives are
        clipped). This is the number usually reported as "FID".
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            "shape mismatch: mu1 "
            f"{mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, sigma2 {s2.shape}; "
            "expected D, D×D, D, D×D with the same D"
        )
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf values")
    # Symmetrise: covariances read back from disk or computed in float32 can be slightly off.
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    diff = mu1 - mu2
    tr_covmean = _trace_sqrt_product(s1, s2)
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets (``N1×D`` and ``N2×D``)."""
    mu1, s1 = feature_stats(feats1)
    mu2, s2 = feature_stats(feats2)
    return frechet_distance(mu1, s1, mu2, s2)


def inception_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) from class probabilities.

    For each split, ``IS = exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the split's mean
    prediction. The N samples are divided into ``splits`` contiguous chunks with
    ``np.array_split`` (sizes differ by at most one; no sample is dropped).

    Args:
        probs: ``N×K`` softmax probabilities (rows are renormalised to sum to 1).
        splits: number of chunks, 1 ≤ splits ≤ N.

    Returns:
        ``(mean, std)`` of the per-split scores (std with divisor ``splits``, like the
        reference implementation).
    """
    p = _as_2d_float64(probs, "probs")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, N={n}], got {splits}")
    if np.any(p < 0):
        raise ValueError("probs must be non-negative (pass softmax probabilities, not logits)")
    row_sums = p.sum(axis=1, keepdims=True)
    if np.any(row_sums <= 0):
        raise ValueError("every row of probs must have a positive sum")
    p = p / row_sums
    scores = []
    for part in np.array_split(p, splits, axis=0):
        py = part.mean(axis=0, keepdims=True)
        # p * (log p - log py), with 0 * log 0 = 0 (py > 0 wherever p > 0).
        pos = part > 0
        log_ratio = np.zeros_like(part)
        log_ratio[pos] = np.log(part[pos]) - np.log(np.broadcast_to(py, part.shape)[pos])
        kl = (part * log_ratio).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    scores_arr = np.asarray(scores)
    return float(scores_arr.mean()), float(scores_arr.std())


def _sq_dists(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor, b_sq: torch.Tensor):
    """Squared Euclidean distances ``|a_i - b_j|²`` (float64, clamped at 0)."""
    d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_(min=0.0)


def _knn_radii_sq(x: torch.Tensor, x_sq: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Squared distance from each row of ``x`` to its k-th nearest other row."""
    n = x.shape[0]
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        d2 = _sq_dists(x[start:stop], x, x_sq[start:stop], x_sq)
        # Exclude self explicitly (round-off could make the diagonal non-zero).
        idx = torch.arange(start, stop, device=x.device)
        d2[idx - start, idx] = float("inf")
        out[start:stop] = torch.topk(d2, k, dim=1, largest=False, sorted=True).values[:, k - 1]
    return out


def _coverage(
    query: torch.Tensor,
    query_sq: torch.Tensor,
    ref: torch.Tensor,
    ref_sq: torch.Tensor,
    ref_radii_sq: torch.Tensor,
    batch_size: int,
) -> float:
    """Fraction of ``query`` rows inside at least one hypersphere (ref_i, radius_i)."""
    inside = 0
    for start in range(0, query.shape[0], batch_size):
        stop = min(start + batch_size, query.shape[0])
        d2 = _sq_dists(query[start:stop], ref, query_sq[start:stop], ref_sq)
        inside += int((d2 <= ref_radii_sq[None, :]).any(dim=1).sum().item())
    return inside / query.shape[0]


def precision_recall(
    real_feats: np.ndarray,
    fake_feats: np.ndarray,
    k: int = 3,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991).

    Each sample of a set gets a hypersphere whose radius is the distance to its k-th nearest
    neighbour in the same set (itself excluded). Precision is the fraction of fake samples
    that fall inside at least one real hypersphere (fidelity); recall is the fraction of real
    samples inside at least one fake hypersphere (coverage). A point on a sphere's boundary
    counts as inside.

    Distances are computed in float64, ``batch_size`` query rows at a time (memory
    ``O(batch_size · N)``), so 10k×10k sets fit comfortably; results are deterministic.

    Args:
        real_feats: ``N_r×D`` features of real images, N_r > k.
        fake_feats: ``N_f×D`` features of generated images, N_f > k.
        k: neighbourhood size (the paper uses 3).
        batch_size: rows per distance block.
        device: torch device for the distance computation (default CPU).

    Returns:
        ``{"precision": float, "recall": float}``, both in [0, 1].
    """
    real = _as_2d_float64(real_feats, "real_feats")
    fake = _as_2d_float64(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]}, fake {fake.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    for name, arr in (("real_feats", real), ("fake_feats", fake)):
        if arr.shape[0] <= k:
            raise ValueError(f"{name} needs more than k={k} samples, got {arr.shape[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    r = torch.from_numpy(real).to(dev)
    f = torch.from_numpy(fake).to(dev)
    r_sq = (r * r).sum(dim=1)
    f_sq = (f * f).sum(dim=1)
    r_radii = _knn_radii_sq(r, r_sq, k, batch_size)
    f_radii = _knn_radii_sq(f, f_sq, k, batch_size)
    precision = _coverage(f, f_sq, r, r_sq, r_radii, batch_size)
    recall = _coverage(r, r_sq, f, f_sq, f_radii, batch_size)
    return {"precision": float(precision), "recall": float(recall)}
