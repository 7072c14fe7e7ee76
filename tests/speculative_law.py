"""An engine-level exact-law check of speculative decoding (issue 28, part 4): causal networks
whose head velocity is affine in the state and whose condition is affine in the previous
token, so that the target's sampled law is Gaussian with a mean and covariance computed here
exactly (no sampling). The real engine (:func:`ecar.engine.speculative.generate_speculative`)
or a planted copy of it (tests/plant_wrong_rules.py) draws ≥ 10^5 images of a few tokens at
once, and :func:`law_pvalue` tests them against that law: the whitened mean (χ²), every entry
of the whitened covariance and a KS test of every whitened coordinate (Bonferroni).

The target's chain is the engine's own (guided, tempered, finished at ``chain_end`` by the
target's Euler step); the draft disagrees with it by a time-dependent shift, more at some
chain steps than at others, so that rounds reject often and blocks that span token
boundaries decide differently at different transitions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats as sps
from torch import nn

from ecar.engine.causal import CausalSampleConfig

N_TOKENS, DIM, CLASSES, LABEL = 3, 2, 4, 1
THRESHOLD_P = 1e-4
"""A law is rejected below this Bonferroni-corrected p-value (four tests per check)."""
SETTINGS = CausalSampleConfig(guidance=(1.5, 2.0, 2.5), steps=3, noise_scale=1.0, temperature=0.9,
                              time_power=2.0, chain_end=0.8)


class AffineHead(nn.Module):
    """v(x, t, z) = −a·x + (1 + t)·z + s·shift(t): affine in x and z. ``shift`` is 1 for t < 0.3
    and −0.4 after (0 for the target): the draft's disagreement differs between steps."""

    def __init__(self, a: float, s: float):
        super().__init__()
        self.register_buffer("a", torch.tensor(a))
        self.register_buffer("s", torch.tensor(s))

    def forward(self, x, t, zc):
        t = t[..., None].to(x.dtype)
        shift = torch.where(t < 0.3, 1.0, -0.4) * torch.tensor([1.0, -0.5], dtype=x.dtype)
        return -self.a * x + (1 + t) * zc + self.s * shift

    def chain_means(self, zc, times, a, b, weights=None):
        """The causal loop's head protocol (:class:`ecar.engine.causal.ChainHead`): step k's mean
        a_k·x + b_k·v(x, t_k), v guided as v_null + w·(v_cond − v_null) when ``weights`` w is given
        (zc then holds the conditional and the null half); one velocity call per step."""
        coef_a, coef_b = a.tolist(), b.tolist()

        def m(x, k):
            t = times[k].to(x.dtype).expand(x.shape[:2])
            if weights is None:
                v = self(x, t, zc)
            else:
                v = torch.lerp(self(x, t, zc[1]), self(x, t, zc[0]), weights.to(x.dtype))
            return torch.add(x * coef_a[k], v, alpha=coef_b[k])

        return m


class AffineCausal(nn.Module):
    """The causal-network interface the engine reads (``step``, ``head_condition``, ``velocity``,
    ``latent`` …) with the condition z_i = L·x_{i−1} + e_i + c_y (x_{i−1}: the chain's state of
    the previous token, 0 before the first): everything affine, no attention, no cache."""

    def __init__(self, lin, pos, labels, head: AffineHead):
        super().__init__()
        self.register_buffer("lin", torch.tensor(lin, dtype=torch.float32))
        self.register_buffer("pos_emb", torch.tensor(pos, dtype=torch.float32))
        self.register_buffer("label_emb", torch.tensor(labels, dtype=torch.float32))
        self.head = head
        self.num_tokens, self.token_dim, self.null_class = N_TOKENS, DIM, CLASSES

    def new_caches(self, capacity: int) -> list:
        return []

    def step(self, prev, pos, y, caches):
        first = (pos == 0)[..., None]
        z = torch.where(first, 0.0, prev @ self.lin.T)
        return z + self.pos_emb[pos.clamp(max=N_TOKENS - 1)] + self.label_emb[y][:, None]

    def head_condition(self, h):
        return h

    def velocity(self, x, u, zc):
        return self.head(x, u, zc)

    def latent(self, tokens):
        return tokens


LIN = [[0.6, -0.3], [0.2, 0.5]]
POS = [[0.5, -0.2], [-0.3, 0.4], [0.1, 0.3]]
LABELS = [[0.2, 0.1], [0.8, -0.6], [-0.4, 0.3], [0.0, 0.5], [-0.1, -0.2]]


def pair(shared: bool) -> tuple[AffineCausal, AffineCausal]:
    """(target, draft): a draft head on the target's "transformer" (shared) or a draft with its
    own condition map too."""
    target = AffineCausal(LIN, POS, LABELS, AffineHead(0.7, 0.0))
    lin = LIN if shared else [[0.5, -0.2], [0.25, 0.45]]
    draft = AffineCausal(lin, POS, LABELS, AffineHead(0.5, 0.8))
    return target, draft


def exact_law(model: AffineCausal, settings: CausalSampleConfig = SETTINGS) -> tuple[np.ndarray, np.ndarray]:
    """Mean (N·D,) and covariance (N·D, N·D) of the tokens of ``model``'s guided chain for label
    LABEL, by propagating every quantity as an affine map of the chain's standard normals."""
    chain = settings.chain()
    grid = chain.grid().double().numpy()
    stds = chain.stds().double().numpy()
    a_coef, b_coef = (c.double().numpy() for c in chain.coefficients())
    K, D, N = chain.steps, DIM, N_TOKENS
    m = N * (K + 1) * D  # standard normals: start and K steps per token
    lin, pos, lab = (v.double().numpy() for v in (model.lin, model.pos_emb, model.label_emb))
    a, s = float(model.head.a), float(model.head.s)

    def shift(t):
        return s * (1.0 if t < 0.3 else -0.4) * np.array([1.0, -0.5])

    def noise(i, k):
        load = np.zeros((D, m))
        load[:, (i * (K + 1) + k) * D:(i * (K + 1) + k + 1) * D] = np.eye(D)
        return load

    tokens, ctx = [], (np.zeros(D), np.zeros((D, m)))
    for i in range(N):
        w = settings.guidance[i]
        zc, zu = (pos[i] + lab[y] for y in (LABEL, CLASSES))
        z0 = zu + w * (zc - zu)  # guidance mixes velocities, affine in z: the mixed condition
        zc_, zl = (z0, np.zeros((D, m))) if i == 0 else (lin @ ctx[0] + z0, lin @ ctx[1])
        x = (np.zeros(D), settings.temperature * noise(i, 0))
        for k in range(K):
            t = grid[k]
            mean_c = (a_coef[k] - b_coef[k] * a) * x[0] + b_coef[k] * ((1 + t) * zc_ + shift(t))
            mean_l = (a_coef[k] - b_coef[k] * a) * x[1] + b_coef[k] * (1 + t) * zl
            x = (mean_c, mean_l + stds[k] * noise(i, k + 1))
        end = chain.end
        vc = -a * x[0] + (1 + end) * zc_ + shift(end)
        vl = -a * x[1] + (1 + end) * zl
        tokens.append((x[0] + (1 - end) * vc, x[1] + (1 - end) * vl))
        ctx = x
    mean = np.concatenate([t[0] for t in tokens])
    load = np.concatenate([t[1] for t in tokens])
    return mean, load @ load.T


def law_pvalue(samples: torch.Tensor, mean: np.ndarray, cov: np.ndarray) -> tuple[float, dict]:
    """samples (n, N, D) against N(mean, cov): the smallest Bonferroni-corrected p-value of the
    tests, and each test's raw p-value."""
    x = samples.reshape(samples.shape[0], -1).double().numpy()
    n, d = x.shape
    vals, vecs = np.linalg.eigh(cov)
    white = (x - mean) @ vecs / np.sqrt(vals)  # ~ N(0, I) under the law
    out = {"mean_chi2": float(sps.chi2.sf(n * (white.mean(0) ** 2).sum(), d))}
    c = np.cov(white, rowvar=False)
    iu = np.triu_indices(d)
    z = (c[iu] - np.eye(d)[iu]) * math.sqrt(n) / np.sqrt(1 + np.eye(d)[iu])
    out["cov_entries"] = float(min(1.0, 2 * sps.norm.sf(np.abs(z).max()) * len(z)))
    out["ks_coords"] = float(min(1.0, min(sps.kstest(white[:, j], "norm").pvalue for j in range(d)) * d))
    out["ks_norm2"] = float(sps.kstest((white ** 2).sum(1), "chi2", args=(d,)).pvalue)
    return float(min(1.0, min(out.values()) * len(out))), out


def draw(generate, shared: bool, gamma: int, n: int, seed: int) -> torch.Tensor:
    """n images of the target by ``generate`` (the engine's generate_speculative or a copy)."""
    target, draft = pair(shared)
    labels = torch.full((n,), LABEL, dtype=torch.long)
    out = generate(target, draft, labels, SETTINGS, gamma=gamma, generator=torch.Generator().manual_seed(seed),
                   verify="step", max_residual_rounds=200)
    return out["latents"], out["stats"]
