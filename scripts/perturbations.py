"""Image perturbations for checking what a feature net sees (not part of the package): the
noise and blur that ``scripts/feature_sensitivity.py`` and tests/test_features.py apply to
real images before FID, to check that FID rises with them."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["add_pixel_noise", "gaussian_blur"]


def add_pixel_noise(images: torch.Tensor, sigma: float, generator: torch.Generator | None = None,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """``images + sigma·z`` with ``z ~ N(0, 1)`` per pixel, in [-1, 1] units (not clamped:
    :func:`ecar.eval.features.features_of_images` clamps and quantises to uint8 levels).

    Pass the same ``noise`` tensor (or a freshly seeded ``generator``) for every ``sigma``
    so that a curve over ``sigma`` differs only in the noise level.
    """
    if noise is None:
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return images + float(sigma) * noise.to(images.device, images.dtype)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels (``N×C×H×W``).

    The kernel has radius ``ceil(3·sigma)`` and sums to 1; borders are replicated (the
    dark backgrounds of our datasets are not darkened further). ``sigma ≤ 0`` returns the
    input unchanged.
    """
    if sigma <= 0:
        return images
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(images.device, images.dtype)
    c = images.shape[1]
    x = F.pad(images, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

