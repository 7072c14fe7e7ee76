"""What the unit-by-unit loops share: the per-unit report and the guided label batch.

A loop makes one :class:`UnitReport` from its ``return_stages`` / ``on_unit`` arguments,
calls :meth:`UnitReport.add` after each unit with a function that builds that unit's latent
(called only when someone listens, so a plain generation builds nothing extra), and returns
:meth:`UnitReport.result` of its final latents.

A loop with a KV cache over units (multistage, next-X) runs its label batch doubled (label,
null label) while any unit left is guided; :class:`GuidedLabels` drops the null half, of the
batch and of the cache, after the last guided unit.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch

__all__ = ["GuidedLabels", "UnitReport", "constant_scale"]


def constant_scale(scale: float) -> Callable[[torch.Tensor], float]:
    """The guidance schedule of one unit: ``scale`` at every time of its integration."""
    return lambda t: scale


class GuidedLabels:
    """The labels a cached loop runs with: ``labels`` (B,) and, while a unit left has a guidance
    scale other than 1, their null half (``y`` is then (2B,)). Call :meth:`at` before each unit."""

    def __init__(self, labels: torch.Tensor, null_class: int, scales: Sequence[float]):
        self.labels, self.scales = labels, scales
        self.guide = any(s != 1.0 for s in scales)
        self.y = torch.cat([labels, torch.full_like(labels, null_class)]) if self.guide else labels

    def at(self, unit: int, cache: Iterable[Any] | None) -> bool:
        """Before unit ``unit``: when no unit from it on is guided, drop the null half (of ``y`` and,
        given, of every layer's ``cache``, which keeps its first B rows) and return True, once."""
        if not self.guide or any(s != 1.0 for s in self.scales[unit:]):
            return False
        self.guide, self.y = False, self.labels
        for kv in cache or ():
            kv.keep(self.labels.shape[0])
        return True


class UnitReport:
    """Collects each unit's latent for ``return_stages`` and passes it to ``on_unit``."""

    def __init__(self, return_stages: bool, on_unit: Callable[[int, torch.Tensor], None] | None):
        self.stages: list[torch.Tensor] | None = [] if return_stages else None
        self.on_unit = on_unit

    def add(self, unit: int, latent: Callable[[], torch.Tensor]) -> None:
        """Unit ``unit`` is done: ``latent()`` (B, C, H, W) goes to the stages and the hook."""
        if self.stages is None and self.on_unit is None:
            return
        current = latent()
        if self.stages is not None:
            self.stages.append(current)
        if self.on_unit is not None:
            self.on_unit(unit, current)

    def result(self, latents: torch.Tensor) -> dict[str, Any]:
        """``{"latents": latents}``, plus ``"stages"`` when they were asked for."""
        out: dict[str, Any] = {"latents": latents}
        if self.stages is not None:
            out["stages"] = self.stages
        return out
