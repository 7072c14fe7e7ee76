"""What every generation loop reports per unit: the ``stages`` list and the ``on_unit`` hook.

A loop makes one :class:`UnitReport` from its ``return_stages`` / ``on_unit`` arguments,
calls :meth:`UnitReport.add` after each unit with a function that builds that unit's latent
(called only when someone listens, so a plain generation builds nothing extra), and returns
:meth:`UnitReport.result` of its final latents.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["UnitReport"]


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

    def result(self, latents: torch.Tensor) -> dict:
        """``{"latents": latents}``, plus ``"stages"`` when they were asked for."""
        out = {"latents": latents}
        if self.stages is not None:
            out["stages"] = self.stages
        return out
