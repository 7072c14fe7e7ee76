"""TAEF2: the tiny (~1.3 M + 1.3 M parameter) autoencoder distilled from the FLUX.2 VAE.

Pretrained weights come from the public repository ``madebyollin/taesd`` (MIT licence), as two
files in one directory, either upstream's ``.pth`` state dicts or safetensors copies of them::

    taef2_encoder.pth           taef2_decoder.pth
    taef2_encoder.safetensors   taef2_decoder.safetensors

The directory is ``autoencoder.path``, else ``$ECAR_TAEF2_PATH``, else the per-user
``~/.cache/ecar/weights/taef2`` (:func:`resolve_weights_dir`).

Each is the plain state dict of an ``nn.Sequential`` stack (keys ``0.weight``, ``11.pool.1.bias``,
…). The modules below are written for this project; only their layer order and parameter names
follow the published layout so that these tensors load unchanged.

The network works on RGB images in [0, 1] and 32-channel latents at 1/8 of the image side, with
raw values roughly in [-3, 3]. :class:`TAEF2Autoencoder` wraps it in the ecar autoencoder
interface: images in [-1, 1], latents multiplied by ``autoencoder.scale``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ecar.autoencoders.base import Autoencoder, AutoencoderConfig
from ecar.errors import ConfigError
from ecar.paths import weights_dir
from ecar.serialization import state_mismatch

ENCODER_FILE = "taef2_encoder.safetensors"
DECODER_FILE = "taef2_decoder.safetensors"
ENV_VAR = "ECAR_TAEF2_PATH"
LATENT_CHANNELS = 32
WIDTH = 64
DOWNSAMPLE = 8


def _conv3(c_in: int, c_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=bias)


class _TanhClamp(nn.Module):
    """Soft clamp of raw latents to (-3, 3): ``3 tanh(x / 3)`` (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(x / 3.0)


class _ResBlock(nn.Module):
    """Three 3x3 convs (ReLU between) added to an identity skip, then ReLU. Shape-preserving.

    With ``global_norm`` the input first gets a residual 1x1-conv bottleneck (width x4) with a
    4-group GroupNorm, which mixes image-wide statistics into every position (the FLUX.2
    variant's "mid-block"). Parameter names (``conv.{0,2,4}``, ``pool.{0,1,3}``) match the
    published state dicts.

    x: (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, channels: int, global_norm: bool = False):
        super().__init__()
        self.conv = nn.Sequential(
            _conv3(channels, channels), nn.ReLU(),
            _conv3(channels, channels), nn.ReLU(),
            _conv3(channels, channels),
        )
        self.pool: nn.Module | None = None
        if global_norm:
            wide = 4 * channels
            self.pool = nn.Sequential(
                nn.Conv2d(channels, wide, kernel_size=1, bias=False),
                nn.GroupNorm(4, wide),
                nn.ReLU(),
                nn.Conv2d(wide, channels, kernel_size=1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(x + self.conv(x))


def taef2_encoder() -> nn.Sequential:
    """(B, 3, H, W) in [0, 1] -> (B, 32, H/8, W/8) raw latents (H, W divisible by 8).

    Index layout: 0 conv, 1 block, then three times [stride-2 conv, 3 blocks]
    (indices 2-5, 6-9, 10-13; the last three blocks use the global norm), 14 conv to 32 channels.
    """
    layers: list[nn.Module] = [_conv3(3, WIDTH), _ResBlock(WIDTH)]
    for level in range(3):
        layers.append(_conv3(WIDTH, WIDTH, stride=2, bias=False))
        layers += [_ResBlock(WIDTH, global_norm=(level == 2)) for _ in range(3)]
    layers.append(_conv3(WIDTH, LATENT_CHANNELS))
    return nn.Sequential(*layers)


def taef2_decoder() -> nn.Sequential:
    """(B, 32, h, w) raw latents -> (B, 3, 8h, 8w) images, roughly in [0, 1] (not clamped).

    Index layout: 0 tanh clamp, 1 conv, 2 ReLU, then [3 blocks (global norm in the first group
    only), nearest x2 upsample, conv] three times (indices 3-7, 8-12, 13-17), 18 block, 19 conv.
    """
    layers: list[nn.Module] = [_TanhClamp(), _conv3(LATENT_CHANNELS, WIDTH), nn.ReLU()]
    for level in range(3):
        layers += [_ResBlock(WIDTH, global_norm=(level == 0)) for _ in range(3)]
        layers += [nn.Upsample(scale_factor=2, mode="nearest"), _conv3(WIDTH, WIDTH, bias=False)]
    layers += [_ResBlock(WIDTH), _conv3(WIDTH, 3)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- weights


def _weight_file(d: Path, safetensors_name: str) -> Path | None:
    """The weights file for one half in ``d``: the safetensors file, else upstream's ``.pth``."""
    for name in (safetensors_name, safetensors_name.replace(".safetensors", ".pth")):
        if (d / name).is_file():
            return d / name
    return None


def resolve_weights_dir(path: str | None) -> Path:
    """Directory holding the TAEF2 weights.

    Order: ``path`` (``autoencoder.path``), then ``$ECAR_TAEF2_PATH``, then the per-user
    directory ``weights/taef2`` under ecar's cache root (:func:`ecar.paths.weights_dir`,
    ``~/.cache/ecar/weights/taef2`` by default). Either the safetensors files or upstream's
    ``taef2_encoder.pth`` / ``taef2_decoder.pth`` are accepted. Raises :class:`ConfigError`
    that says where the weights come from and where to put them when none is found.
    """
    user_dir = weights_dir("taef2")
    how = (
        f"The weights are taef2_encoder.pth and taef2_decoder.pth of github.com/madebyollin/taesd "
        f"(MIT licence; {ENCODER_FILE} / {DECODER_FILE} converted from them also work). Put both "
        f"files in {user_dir} (the per-user location; $ECAR_CACHE moves it), or in any directory "
        f"given by autoencoder.path=DIR or the environment variable {ENV_VAR}=DIR."
    )
    if path:
        d, source = Path(path).expanduser(), f"autoencoder.path={path!r}"
    elif os.environ.get(ENV_VAR):
        d, source = Path(os.environ[ENV_VAR]).expanduser(), f"{ENV_VAR}={os.environ[ENV_VAR]!r}"
    else:
        d, source = user_dir, "the per-user weights directory"
        if not d.is_dir():
            raise ConfigError(
                f"autoencoder 'taef2' needs pretrained weights: autoencoder.path and {ENV_VAR} "
                f"are not set and '{d}' does not exist. {how}"
            )
    if not d.is_dir():
        raise ConfigError(f"TAEF2 weights directory from {source} does not exist: '{d}'. {how}")
    missing = [f for f in (ENCODER_FILE, DECODER_FILE) if _weight_file(d, f) is None]
    if missing:
        raise ConfigError(
            f"TAEF2 weights directory '{d}' (from {source}) lacks {', '.join(missing)} "
            f"(or its .pth). {how}"
        )
    return d


def _load_into(module: nn.Module, file: Path) -> None:
    """Load a safetensors state dict into ``module``; a RuntimeError says what does not fit."""
    try:
        if file.suffix == ".pth":  # upstream's plain state dict; never unpickle arbitrary objects
            state = torch.load(file, map_location="cpu", weights_only=True)
        else:
            state = load_file(str(file), device="cpu")
    except Exception as e:  # safetensors' and torch's error classes differ between versions
        raise RuntimeError(
            f"cannot read TAEF2 weights '{file}': {e}. Replace it with an intact copy of "
            f"{file.name} (a safetensors state dict)."
        ) from None
    why = state_mismatch(module, state)
    if why:
        raise RuntimeError(
            f"'{file}' does not hold TAEF2 weights: {why}. Use {file.name} converted "
            f"from madebyollin/taesd (taef2_*.pth, the FLUX.2 variant), not another TAESD model."
        )
    module.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- wrapper


class TAEF2Autoencoder(Autoencoder):
    """Frozen pretrained TAEF2 in the ecar autoencoder interface.

    - ``encode``: (B, 3, H, W) images in [-1, 1] -> (B, 32, H/8, W/8) latents × ``scale``.
    - ``decode``: (B, 32, h, w) latents -> (B, 3, 8h, 8w) images in [-1, 1] (not clamped).

    H and W must be divisible by 8. The weights never require gradients and the module stays in
    eval mode (``train()`` is a no-op). Inputs are cast to the weights' dtype; outputs come back
    in the input's dtype.
    """

    downsample = DOWNSAMPLE

    def __init__(self, scale: float = 1.0, weights_dir: str | Path | None = None):
        """Build the network; load ``weights_dir`` if given (else random init, for tests)."""
        super().__init__()
        if not scale > 0:
            raise ConfigError(f"autoencoder.scale must be > 0 for taef2, got {scale}")
        self.scale = float(scale)
        self.encoder = taef2_encoder()
        self.decoder = taef2_decoder()
        self.weights_dir = None if weights_dir is None else Path(weights_dir)
        if self.weights_dir is not None:
            for module, name in ((self.encoder, ENCODER_FILE), (self.decoder, DECODER_FILE)):
                file = _weight_file(self.weights_dir, name)
                if file is None:
                    raise ConfigError(f"TAEF2 weights directory '{self.weights_dir}' lacks {name} (or its .pth)")
                _load_into(module, file)
        self.requires_grad_(False)
        super().train(False)

    @classmethod
    def from_config(cls, cfg: AutoencoderConfig, image_channels: int | None) -> "TAEF2Autoencoder":
        """Build from ``autoencoder.*``; weights from :func:`resolve_weights_dir` (``cfg.path``,
        ``$ECAR_TAEF2_PATH``, the per-user weights directory). Needs ``image_channels == 3``."""
        if image_channels != 3:
            raise ConfigError(
                f"autoencoder 'taef2' needs RGB images but data.channels={image_channels}; "
                f"set data.channels=3 (or use autoencoder.name=identity)"
            )
        return cls(scale=cfg.scale, weights_dir=resolve_weights_dir(cfg.path))

    def train(self, mode: bool = True) -> "TAEF2Autoencoder":
        """Frozen: always stays in eval mode."""
        return super().train(False)

    def latent_channels(self) -> int:
        return LATENT_CHANNELS

    def latent_size(self, resolution: int) -> int:
        if resolution % DOWNSAMPLE:
            raise ConfigError(
                f"taef2 needs data.resolution divisible by {DOWNSAMPLE}, got {resolution}"
            )
        return resolution // DOWNSAMPLE

    def _param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 32, H/8, W/8) latents (raw latents × scale)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"taef2 encode expects (B, 3, H, W) images, got {tuple(images.shape)}")
        if images.shape[-1] % DOWNSAMPLE or images.shape[-2] % DOWNSAMPLE:
            raise ValueError(f"taef2 needs H and W divisible by 8, got {tuple(images.shape[-2:])}")
        x = (images.to(self._param_dtype()) + 1.0) * 0.5
        return (self.encoder(x) * self.scale).to(images.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 32, h, w) latents -> (B, 3, 8h, 8w) images in [-1, 1] (not clamped)."""
        if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
            raise ValueError(
                f"taef2 decode expects (B, 32, h, w) latents, got {tuple(latents.shape)}"
            )
        x = self.decoder(latents.to(self._param_dtype()) / self.scale)
        return (x * 2.0 - 1.0).to(latents.dtype)
