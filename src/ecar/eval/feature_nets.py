"""The shipped classifier feature networks: :class:`DigitsNet` (digits, shapes and
Fashion-MNIST at their sizes), and reading and writing its weights (``ecar/assets``).

``scripts/train_feature_net.py`` trains them; :mod:`ecar.eval.features` wraps them (and
Inception) as feature extractors. The ``spatial`` feature mode (layout without global pooling
+ first-layer texture statistics) was chosen so that FID rises with pixel noise and blur
(``scripts/feature_sensitivity.py``, tests/test_features.py).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ecar.paths import assets_dir

__all__ = ["CLASSIFIER_NETS", "DigitsNet", "FEATURE_MODES", "assets_dir", "load_classifier", "save_classifier"]

CLASSIFIER_NETS = ("digits", "shapes", "fashion")
"""Shipped classifier feature nets (``ecar/assets/<name>_classifier.*``)."""


# ---------------------------------------------------------------------------------------
# Small classifier


FEATURE_MODES = ("spatial", "pooled")


class DigitsNet(nn.Module):
    """Small CNN classifier whose activations serve as FID features.

    Trunk: ``n_stages = log2(resolution / 4)`` stages of two 3×3 conv–BN–SiLU layers
    followed by 2×2 average pooling (channels ``width·min(2^i, 2)``), so the last map is
    4×4. SiLU (not ReLU) keeps the feature covariance full rank. Two feature modes
    (``features``, recorded in the JSON sidecar):

    * ``"spatial"`` (the shipped nets): the feature vector is the concatenation of

      - **layout**: ``SiLU(Conv1×1(last 4×4 map))`` with ``spatial_channels`` = k output
        channels, flattened *without pooling* (16·k values: what is where), which is also
        the classifier's penultimate layer (``head`` is a ``Linear`` on it); and
      - **texture**: three spatial statistics of each of the ``width`` channels ``a`` of
        the first conv–BN–SiLU layer, at full resolution (3·width values): mean, standard
        deviation, and the median over pixels of ``|a − mean₃ₓ₃(a)|`` (local contrast; the
        median is set by the flat regions that cover most of an image, where a person sees
        grain, and is not moved by the object's edges). These first-layer filters respond
        to edges and grain; pixel noise raises the spread and the local contrast and blur
        lowers them, which the pooled classifier features of the deep layers barely
        register (they were trained to ignore it).

      Each of the ``16·k + 3·width`` values is standardised with a fixed affine map
      (``feat_shift``, ``feat_scale``: mean and 1/std over the training split, computed
      by ``scripts/train_feature_net.py`` after training and stored with the weights), so
      FID counts a change of one real-data standard deviation the same in every feature;
      without it the texture statistics (averages over the whole image, hence of small
      spread) would be invisible next to the layout features.
    * ``"pooled"`` (nets trained before the spatial mode; kept loadable): global average
      pooling of the last map, ``Linear → SiLU`` to ``feature_dim`` values. Pixel noise
      and mild blur hardly move these features (``scripts/feature_sensitivity.py``).

    Args:
        in_channels: image channels (1 for ``digits``/``fashion``, 3 for ``shapes``).
        resolution: input height = width, a power of two ≥ 8.
        num_classes: number of classes K.
        width: channels of the first stage.
        feature_dim: D. ``pooled``: the embedding width (default 128). ``spatial``:
            derived as ``16·spatial_channels + 3·width``; a given value must match.
        features: ``"spatial"`` or ``"pooled"``.
        spatial_channels: k of the ``spatial`` mode's 1×1 conv (default 8).

    Shapes: ``x`` is ``N×in_channels×resolution×resolution`` in [-1, 1];
    ``features(x)`` is ``N×feature_dim``; ``logits(x)`` and ``forward(x)`` are ``N×K``.
    """

    feat_shift: torch.Tensor
    """``spatial`` mode: the features' mean over the training split (buffer)."""
    feat_scale: torch.Tensor
    """``spatial`` mode: 1/std of the features over the training split (buffer)."""

    def __init__(
        self,
        in_channels: int = 1,
        resolution: int = 16,
        num_classes: int = 10,
        width: int = 32,
        feature_dim: int | None = None,
        features: str = "pooled",
        spatial_channels: int | None = None,
    ) -> None:
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two ≥ 8, got {resolution}")
        if features not in FEATURE_MODES:
            raise ValueError(f"features must be one of {FEATURE_MODES}, got {features!r}")
        self.in_channels = in_channels
        self.resolution = resolution
        self.num_classes = num_classes
        self.width = width
        self.mode = features
        n_stages = int(math.log2(resolution // 4))
        layers: list[nn.Module] = []
        c_in = in_channels
        for i in range(n_stages):
            c_out = width * min(2**i, 2)
            for _ in range(2):
                layers += [
                    nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c_out),
                    nn.SiLU(),
                ]
                c_in = c_out
            layers.append(nn.AvgPool2d(2))
        self.trunk = nn.Sequential(*layers)
        if features == "pooled":
            if spatial_channels is not None:
                raise ValueError("spatial_channels applies to features='spatial' only")
            self.spatial_channels = None
            self.feature_dim = 128 if feature_dim is None else int(feature_dim)
            self.embed: nn.Module = nn.Linear(c_in, self.feature_dim)
            self.head = nn.Linear(self.feature_dim, num_classes)
        else:
            k = 8 if spatial_channels is None else int(spatial_channels)
            self.spatial_channels = k
            dim = 16 * k + 3 * width
            if feature_dim is not None and int(feature_dim) != dim:
                raise ValueError(
                    f"features='spatial' has feature_dim 16·spatial_channels + 3·width = {dim}, "
                    f"got feature_dim={feature_dim}"
                )
            self.feature_dim = dim
            self.embed = nn.Conv2d(c_in, k, 1)
            self.head = nn.Linear(16 * k, num_classes)
            self.register_buffer("feat_shift", torch.zeros(dim))
            self.register_buffer("feat_scale", torch.ones(dim))

    def arch_args(self) -> dict[str, Any]:
        """Constructor arguments, as stored in the JSON sidecar."""
        args: dict[str, Any] = {
            "in_channels": self.in_channels,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            "width": self.width,
            "feature_dim": self.feature_dim,
        }
        if self.mode != "pooled":  # old sidecars (pooled) have no such keys
            args["features"] = self.mode
            args["spatial_channels"] = self.spatial_channels
        return args

    def _check(self, x: torch.Tensor) -> None:
        want = (self.in_channels, self.resolution, self.resolution)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"expected images N×{want[0]}×{want[1]}×{want[2]}, got {tuple(x.shape)}"
            )

    def _raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(penultimate N×P, texture statistics N×3·width or None)`` before standardising."""
        self._check(x)
        if self.mode == "pooled":
            h = self.trunk(x).mean(dim=(2, 3))
            return F.silu(self.embed(h)), None
        first = self.trunk[:3](x)  # the first conv–BN–SiLU, full resolution
        h = self.trunk[3:](first)
        layout = F.silu(self.embed(h)).flatten(1)
        std, mean = torch.std_mean(first, dim=(2, 3))
        local_mean = F.avg_pool2d(F.pad(first, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        contrast = (first - local_mean).abs().flatten(2).median(dim=2).values
        return layout, torch.cat([mean, std, contrast], dim=1)

    def _standardise(self, layout: torch.Tensor, texture: torch.Tensor | None) -> torch.Tensor:
        if texture is None:
            return layout
        f = torch.cat([layout, texture], dim=1)
        return (f - self.feat_shift) * self.feat_scale

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features before the fixed standardisation (``N×feature_dim``); used to fit it."""
        layout, texture = self._raw(x)
        return layout if texture is None else torch.cat([layout, texture], dim=1)

    def set_standardisation(self, raw: torch.Tensor) -> None:
        """Set ``feat_shift``/``feat_scale`` to the mean and 1/std of raw features ``N×D``
        (``spatial`` mode; a feature that never varies keeps scale 1)."""
        if self.mode == "pooled":
            raise ValueError("the pooled feature mode has no standardisation")
        raw = raw.detach().double()
        std = raw.std(dim=0)
        scale = torch.where(std > 1e-6, 1.0 / std.clamp_min(1e-6), torch.ones_like(std))
        self.feat_shift.copy_(raw.mean(dim=0).to(self.feat_shift))
        self.feat_scale.copy_(scale.to(self.feat_scale))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """FID features, ``N×feature_dim`` (see the class docstring for the two modes)."""
        return self._standardise(*self._raw(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``N×num_classes``."""
        return self.head(self._raw(x)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layout, texture = self._raw(x)
        return self._standardise(layout, texture), self.head(layout)


def save_classifier(net: DigitsNet, path_stem: str | Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (weights, float32) and ``<stem>.json`` (arch + ``meta``)."""
    from safetensors.torch import save_file

    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_suffix(".safetensors")
    sidecar = stem.with_suffix(".json")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()
             if v.is_floating_point()}
    # Integer buffers (BatchNorm's num_batches_tracked) are not needed for inference.
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "arch": json.dumps(net.arch_args())})
    os.chmod(tmp, 0o644)  # safetensors creates the file owner-only; this is packaged data
    os.replace(tmp, weights)
    doc = {"arch": net.arch_args(), **meta}
    tmp_json = sidecar.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp_json, sidecar)
    return weights, sidecar


def load_classifier(name: str, directory: str | Path | None = None) -> tuple[DigitsNet, dict]:
    """Load ``<directory>/<name>_classifier.{safetensors,json}`` (default: packaged assets).

    Returns the network (eval mode, CPU) and the sidecar dict.
    """
    from safetensors.torch import load_file

    d = Path(directory) if directory is not None else assets_dir()
    weights = d / f"{name}_classifier.safetensors"
    sidecar = d / f"{name}_classifier.json"
    if not weights.is_file() or not sidecar.is_file():
        raise FileNotFoundError(
            f"feature net '{name}' not found: expected {weights} and {sidecar}. Train it with "
            f"`python scripts/train_feature_net.py --dataset {name} --out {d}`."
        )
    meta = json.loads(sidecar.read_text())
    net = DigitsNet(**meta["arch"])
    state = load_file(str(weights))
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(
            f"{weights} does not match the architecture in {sidecar}: "
            f"missing {missing}, unexpected {list(unexpected)}"
        )
    return net.eval(), meta


