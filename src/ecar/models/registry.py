"""Named model sizes and the families they belong to.

A *family* (``dit``, ``ecar``) knows its config dataclass and how to build its network,
its training objective and its sampling loop. An *entry* (``dit-tiny``, ``dit-xl/2``,
``ecar-b``) is a family plus the field values of its config. CLI choices and the
parametrised tests come from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ecar.config import ConfigError, dataclass_from_dict


@dataclass(frozen=True)
class Family:
    """How to build and use one model family.

    build(cfg: Config, latent_channels, latent_size, num_classes) -> nn.Module
    objective(model, cfg: Config) -> nn.Module whose forward(x, y, generator) returns a dict
        of losses with key ``loss``
    generate(model, cfg: Config, labels, sample_cfg, generator, return_stages) -> dict with
        ``latents`` (B, C, H, W) and optionally ``stages`` (list of per-stage latents)
    """

    name: str
    config_cls: type
    build: Callable[..., nn.Module]
    objective: Callable[..., nn.Module]
    generate: Callable[..., dict]


FAMILIES: dict[str, Family] = {}
ENTRIES: dict[str, tuple[str, dict[str, Any]]] = {}


def register_family(family: Family) -> None:
    FAMILIES[family.name] = family


def register_model(name: str, family: str, **fields: Any) -> None:
    ENTRIES[name] = (family, fields)


def model_names(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return [n for n, (f, _) in ENTRIES.items() if family is None or f == family]


def family_of(model_cfg: Any) -> Family:
    _ensure_loaded()
    for fam in FAMILIES.values():
        if isinstance(model_cfg, fam.config_cls):
            return fam
    raise ConfigError(f"no model family owns config {type(model_cfg).__name__}")


def resolve_model_config(raw: dict | None) -> Any:
    """``{'name': 'dit-s/2', 'depth': 6}`` -> the family dataclass with entry + overrides."""
    _ensure_loaded()
    raw = dict(raw or {})
    name = raw.get("name", "dit-tiny")
    if name not in ENTRIES:
        raise ConfigError(f"unknown model.name '{name}'. Registered models: {', '.join(ENTRIES)}")
    fam_name, fields = ENTRIES[name]
    fam = FAMILIES[fam_name]
    base = fam.config_cls(**{**fields, "name": name})
    raw.pop("name", None)
    return dataclass_from_dict(fam.config_cls, raw, "model", base=base)


def model_config_dict(model_cfg: Any) -> dict:
    return dataclasses.asdict(model_cfg)


_LOADED = False


def _ensure_loaded() -> None:
    """Import the family modules (they register themselves) on first use."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        import ecar.models.families  # noqa: F401
