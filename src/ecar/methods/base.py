"""The method protocol: what a generation method is, behind one interface.

A *method* (DiT, E-CAR, FlowAR mode, later MAR, xAR…) owns everything that differs between
methods: its network's config dataclass and named sizes, how to build the network, its
training objective, its generation loop, its own sampling settings (a
:class:`~ecar.samplers.SampleConfig` subclass, validated like any config section; CLI flags
are derived from its fields) and how its step counts scale in a sweep. Training,
evaluation, the benchmark, the demo and the CLI talk to this interface only, through the
registry (:mod:`ecar.methods.registry`), and never ask which method they hold.

What a method can do beyond generating is declared, not looked up by name: a method whose
samples a smaller draft can propose (exact speculative decoding, docs/speculative.md) sets
:attr:`Method.drafting` to its :class:`Drafting`; the pipeline (``Pipeline.with_draft``),
``ecar sample --draft``, ``ecar bench --draft`` and ``ecar draft`` ask for it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Generic, Mapping, TypeVar

import torch
from torch import nn

from ecar.engine.speculative_cost import GammaMemory
from ecar.flow import FlowConfig
from ecar.models.base import LatentSpec
from ecar.samplers import SampleConfig

__all__ = ["Drafting", "Method", "NetT", "SampleT", "scale_count", "total_steps"]

NetT = TypeVar("NetT", bound=nn.Module)
"""The network a method builds and its loops read (each loop names what it needs of it in a
:class:`typing.Protocol` beside the loop, :mod:`ecar.engine`)."""
SampleT = TypeVar("SampleT", bound=SampleConfig)
"""The method's sampling settings."""


def scale_count(steps: int, factor: float) -> int:
    """``max(1, round(factor · steps))`` with rounding half up (a sweep's step multiplier)."""
    if not factor > 0:
        raise ValueError(f"step multipliers must be > 0, got {factor}")
    return max(1, int(math.floor(steps * factor + 0.5)))


def total_steps(counts: int | list[int]) -> int:
    """Integration steps per image of :meth:`Method.step_counts` (summed over units)."""
    return int(sum(counts)) if isinstance(counts, (list, tuple)) else int(counts)


class Drafting(ABC, Generic[NetT, SampleT]):
    """How a method's samples are drawn faster with a draft: exact speculative decoding
    (docs/speculative.md). A method that can be drafted sets :attr:`Method.drafting` to one.

    ``description`` says what a draft of the method is (for ``ecar draft`` and messages).
    """

    description: str
    page_settings: tuple[str, ...] = ()
    """Sampling settings of drafted sampling that ``ecar serve``'s page offers besides the
    method's own (:meth:`Method.page_fields`)."""

    @abstractmethod
    def check_pair(self, target: Any, draft: Any) -> None:
        """Raise :class:`~ecar.errors.ConfigError` unless a network of model config ``draft`` can propose
        tokens for one of model config ``target`` (the pipeline has checked that both are of
        this method, on the same data and autoencoder)."""

    @abstractmethod
    def speculative(self, target: NetT, draft: NetT, sample: SampleT, labels: torch.Tensor,
                    generator: torch.Generator | None = None, memory: GammaMemory | None = None) -> dict:
        """Samples of ``target`` at ``sample``'s settings for labels (B,), proposed by ``draft``:
        ``{"latents", "stats", "source"}``; settings without a path density to compare raise
        :class:`~ecar.errors.ConfigError`. ``memory``: what earlier calls of the same pair learned
        for choosing γ (:class:`~ecar.engine.speculative_cost.GammaMemory`)."""

    @abstractmethod
    def check_settings(self, sample: SampleT) -> None:
        """Raise :class:`~ecar.errors.ConfigError` unless drafts made for ``sample``'s settings would be used
        (``ecar draft`` distils for the settings it will sample with)."""

    @abstractmethod
    def make_draft(self, target: NetT, model_cfg: Any, components: int, width: int,
                   seed: int = 0) -> tuple[NetT, Any]:
        """A fresh draft network for ``target`` (whose model config is ``model_cfg``) and its
        model config: what ``ecar draft`` trains with :meth:`distill`."""

    @abstractmethod
    def distill(self, target: NetT, draft: NetT, sample: SampleT, steps: int, batch: int, lr: float,
                pool: int, seed: int = 0, on_step: Callable[[int, float], None] | None = None) -> dict:
        """Train ``draft`` (in place) to propose what ``target`` samples at ``sample``'s settings;
        returns its losses and held-out measures (written to ``draft.json`` by ``ecar draft``)."""


class Method(ABC, Generic[NetT, SampleT]):
    """One generation method. Subclasses set the attributes and implement the abstract methods.

    Attributes:
        name: registry key, also the ``mode`` label of reports (``dit``, ``ecar``, ``flowar``).
        family: the network family, i.e. its config class (recorded in checkpoints; E-CAR
            and FlowAR mode share ``ecar``).
        config_cls: the model config dataclass (the ``model`` section of a recipe).
        sample_config_cls: the method's sampling settings (the ``sample`` section).
        entries: named model sizes it owns: ``{model name: field values of config_cls}``.
        drafting: how a draft speeds up its sampling (:class:`Drafting`), or None when it
            cannot be drafted.
    """

    name: str
    family: str
    config_cls: type
    sample_config_cls: type[SampleConfig]
    entries: Mapping[str, Mapping[str, Any]]
    drafting: Drafting[NetT, SampleT] | None = None
    page_settings: tuple[str, ...] = ("sampler", "steps", "cfg", "cfg_schedule", "cfg_interval")
    """The sampling settings ``ecar serve``'s page offers for this method, in order: those that
    change its samples (not, say, E-CAR's ``steps`` when every stage has its own count).
    :meth:`page_fields` adds the conditional ones."""

    def page_fields(self, model: NetT, sample: SampleT, drafted: bool = False) -> dict[str, Any]:
        """``{name: value}`` of the settings the page offers for ``model`` at ``sample``:
        :attr:`page_settings`, ``noise_scale`` where the sampler is ``euler_maruyama`` (the
        only one it acts on) and, when ``drafted``, the drafting's (:attr:`Drafting.page_settings`)."""
        names = list(self.page_settings)
        if sample.sampler == "euler_maruyama":
            names.append("noise_scale")
        if drafted and self.drafting is not None:
            names += self.drafting.page_settings
        return {name: getattr(sample, name) for name in names}

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
    def build(self, model_cfg: Any, spec: LatentSpec) -> NetT:
        """The network for ``spec``'s latents (freshly initialised, on the CPU)."""

    @abstractmethod
    def objective(self, model: NetT, flow: FlowConfig) -> nn.Module:
        """The training objective wrapping ``model``: ``forward(x (B, C, H, W) clean latents,
        y (B,) labels, generator) -> {"loss": scalar, ...}``. DDP and EMA wrap it from outside."""

    @abstractmethod
    def generate(self, model: NetT, sample: SampleT, labels: torch.Tensor,
                 generator: torch.Generator | None = None, return_stages: bool = False,
                 on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
        """labels (B,) on the model's device -> ``{"latents": (B, C, H, W)}``, plus
        ``"stages"`` (the latents after each unit, coarse to fine) with ``return_stages``.
        ``on_unit(i, latents)`` receives unit i's result as soon as it exists (the engine's
        hook; ``ecar serve`` streams it), one call per entry of :meth:`step_counts`."""

    def head(self, model: NetT) -> nn.Module | None:
        """The per-token head of ``model`` whose FLOPs a cost anatomy reports apart
        (:func:`ecar.eval.cost.cost_anatomy`), or None for a network without one (default)."""
        return None

    @abstractmethod
    def step_counts(self, model: NetT, sample: SampleT) -> int | list[int]:
        """Integration steps ``sample`` asks of ``model``: an int for one unit, a list per unit."""

    @abstractmethod
    def scale_steps(self, model: NetT, sample: SampleT, factor: float) -> SampleT:
        """A copy of ``sample`` with every step count multiplied by ``factor``
        (:func:`scale_count`), keeping the recipe's allocation across units."""
