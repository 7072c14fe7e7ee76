"""Assemble the parts a config describes: dataset, autoencoder, model. (A trained model is
loaded by :func:`ecar.load`, :mod:`ecar.pipeline`.)"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ecar.autoencoders import Autoencoder, build_autoencoder
from ecar.config import Config, ConfigError, DataConfig
from ecar.data import HFlipped, ImageDataset, build_dataset, source_data_args
from ecar.methods import Method, method_of
from ecar.models.base import LatentSpec

__all__ = ["LatentSpec", "build_data", "build_model", "latent_spec", "resolved_data"]


def build_data(data: DataConfig, split: str = "train", images: bool = False) -> ImageDataset:
    """The dataset ``data`` names (the config is not modified; see :func:`resolved_data`).

    ``data.hflip`` doubles the training split with mirror images (not with ``images=True``:
    a FID reference is the real images). For ``latents:DIR`` the
    training split is the cache itself (items are latents, mirror copies already in it if it
    was encoded so); any other split, or ``images=True`` (what FID references need), builds
    the image dataset the cache was encoded from.
    """
    source = source_data_args(data.name)
    cached = source is not None and not images and split == "train"
    args: dict[str, Any] = source if source is not None and not cached else {
        "name": data.name, "resolution": data.resolution, "channels": data.channels,
        "seed": data.seed, "shapes_size": data.shapes_size}
    ds = build_dataset(args["name"], split=split, resolution=args["resolution"], channels=args["channels"],
                       seed=args["seed"], shapes_size=args["shapes_size"])
    if cached and data.resolution is not None and data.resolution != ds.resolution:
        raise ConfigError(f"data.resolution={data.resolution} but the latent cache '{data.name}' "
                          f"was encoded from {ds.resolution}px images")
    if data.hflip and split == "train" and not images and not cached:  # references stay the real images
        ds = HFlipped(ds)
    if data.num_classes is not None and data.num_classes != ds.num_classes:
        raise ConfigError(
            f"data.num_classes={data.num_classes} but dataset '{data.name}' has {ds.num_classes} classes"
        )
    return ds


def resolved_data(data: DataConfig, dataset: ImageDataset) -> DataConfig:
    """A copy of ``data`` with the dataset's resolution, channels and classes filled in."""
    return dataclasses.replace(data, resolution=dataset.resolution, channels=dataset.channels,
                               num_classes=dataset.num_classes)


def latent_spec(cfg: Config, autoencoder: Autoencoder | None = None) -> LatentSpec:
    """Latent shape from a config whose data section is resolved (see :func:`resolved_data`)."""
    d = cfg.data
    if d.resolution is None or d.channels is None or d.num_classes is None:
        raise ConfigError("data.resolution, data.channels and data.num_classes are not resolved")
    ae = autoencoder or build_autoencoder(cfg.autoencoder, d.channels)
    return LatentSpec(ae.latent_channels(), ae.latent_size(d.resolution), d.num_classes)


def build_model(cfg: Config, spec: LatentSpec) -> tuple[nn.Module, Method]:
    """The network ``cfg.model`` describes for ``spec``'s latents, and its method.

    The one place a model config meets its latent: a config that cannot model it (a patch
    that does not divide it, stages that do not end at its grid) is a :class:`ConfigError`
    naming the fields, raised by the model config's ``validate_latent``.
    """
    method = method_of(cfg.model)
    cfg.model.validate_latent(spec.size)
    return method.build(cfg.model, spec), method
