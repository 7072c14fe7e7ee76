"""The method protocol: what a generation method is, behind one interface.

A *method* (DiT, E-CAR, FlowAR mode, later MAR, xAR…) owns everything that differs between
methods: its network's config dataclass and named sizes, how to build the network, its
training objective, its generation loop, its own sampling settings (a
:class:`~ecar.samplers.SampleConfig` subclass, validated like any config section; CLI flags
are derived from its fields) and how its step counts scale in a sweep. Training,
evaluation, the benchmark, the demo and the CLI talk to this interface only, through the
registry (:mod:`ecar.methods.registry`), and never ask which method they hold.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ecar.errors import ConfigError
from ecar.flow import FlowConfig
from ecar.models.base import LatentSpec
from ecar.samplers import SampleConfig

__all__ = ["Method", "scale_count", "total_steps"]


def scale_count(steps: int, factor: float) -> int:
    """``max(1, round(factor · steps))`` with rounding half up (a sweep's step multiplier)."""
    if not factor > 0:
        raise ValueError(f"step multipliers must be > 0, got {factor}")
    return max(1, int(math.floor(steps * factor + 0.5)))


def total_steps(counts: int | list[int]) -> int:
    """Integration steps per image of :meth:`Method.step_counts` (summed over units)."""
    return int(sum(counts)) if isinstance(counts, (list, tuple)) else int(counts)


class Method(ABC):
    """One generation method. Subclasses set the attributes and implement the abstract methods.

    Attributes:
        name: registry key, also the ``mode`` label of reports (``dit``, ``ecar``, ``flowar``).
        family: the network family, i.e. its config class (recorded in checkpoints; E-CAR
            and FlowAR mode share ``ecar``).
        config_cls: the model config dataclass (the ``model`` section of a recipe).
        sample_config_cls: the method's sampling settings (the ``sample`` section).
        entries: named model sizes it owns: ``{model name: field values of config_cls}``.
    """

    name: str
    family: str
    config_cls: type
    sample_config_cls: type[SampleConfig]
    entries: Mapping[str, Mapping[str, Any]]

    def __repr__(self) -> str:
        return f"<method {self.name}>"

    def owns(self, model_name: str) -> bool:
        """Whether ``model_name`` is one of this method's registry entries."""
        return model_name in self.entries

    def accepts(self, model_cfg: Any) -> bool:
        """Whether a resolved model config is this method's (default: its config class)."""
        return type(model_cfg) is self.config_cls

    def entry_config(self, model_name: str) -> Any:
        """The config of registry entry ``model_name`` (no overrides)."""
        return self.config_cls(**{**self.entries[model_name], "name": model_name})

    @abstractmethod
    def build(self, model_cfg: Any, spec: LatentSpec) -> nn.Module:
        """The network for ``spec``'s latents (freshly initialised, on the CPU)."""

    @abstractmethod
    def objective(self, model: nn.Module, flow: FlowConfig) -> nn.Module:
        """The training objective wrapping ``model``: ``forward(x (B, C, H, W) clean latents,
        y (B,) labels, generator) -> {"loss": scalar, ...}``. DDP and EMA wrap it from outside."""

    @abstractmethod
    def generate(self, model: nn.Module, sample: SampleConfig, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        """labels (B,) on the model's device -> ``{"latents": (B, C, H, W)}``, plus
        ``"stages"`` (the latents after each unit, coarse to fine) with ``return_stages``.
        ``on_unit(i, latents)`` receives unit i's result as soon as it exists (the engine's
        hook; ``ecar serve`` streams it), one call per entry of :meth:`step_counts`."""

    def speculative(self, target: nn.Module, draft: nn.Module, sample: SampleConfig, labels: torch.Tensor,
                    generator: torch.Generator | None = None) -> dict:
        """Exact speculative decoding of ``target`` with proposals of ``draft`` (a checkpoint of
        the same method, data and token layout): ``{"latents", "stats", "source"}``
        (docs/speculative.md). Methods without it raise :class:`ConfigError`."""
        raise ConfigError(f"method {self.name} has no speculative decoding (a draft model); it is "
                          "implemented for the causal per-token method ar (docs/speculative.md)")

    @abstractmethod
    def step_counts(self, model: nn.Module, sample: SampleConfig) -> int | list[int]:
        """Integration steps ``sample`` asks of ``model``: an int for one unit, a list per unit."""

    @abstractmethod
    def scale_steps(self, model: nn.Module, sample: SampleConfig, factor: float) -> SampleConfig:
        """A copy of ``sample`` with every step count multiplied by ``factor``
        (:func:`scale_count`), keeping the recipe's allocation across units."""
