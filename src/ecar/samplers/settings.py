"""Sampler settings every method shares, and the one list of sampler and schedule names.

:class:`SampleConfig` holds what any flow-matching sampling needs: the integrator, its step
count, the SDE noise and classifier-free guidance. Each method subclasses it with its own
settings (E-CAR adds ``stage_steps``; :mod:`ecar.methods`), and the ``sample`` section of a
recipe is that subclass. Command-line flags are derived from these fields and their
:func:`ecar.schema.setting` help texts, so a setting is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ecar.errors import ConfigError, shown
from ecar.samplers.guidance import GUIDANCE_SCHEDULES
from ecar.samplers.ode import SAMPLERS
from ecar.schema import check_choice, check_each, check_range, setting

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)
"""Integrators by name (:data:`ecar.samplers.ode.SAMPLERS`); CLI choices and validation use this."""

__all__ = ["GUIDANCE_SCHEDULES", "SAMPLER_NAMES", "SampleConfig", "check_cfg_interval"]


def check_cfg_interval(iv, where: str = "sample.cfg_interval") -> None:
    """Raise :class:`ConfigError` unless ``iv`` is None or [lo, hi] with 0 <= lo <= hi <= 1
    (each entry checked on its own first, ``where[i]``, like every list field)."""
    if iv is None:
        return
    if not isinstance(iv, (list, tuple)) or len(iv) != 2:
        raise ConfigError(f"{where} must be [lo, hi] with 0 <= lo <= hi <= 1, got {shown(iv)}")
    check_each(where, iv, 0, 1, meaning="a sampling progress")
    if iv[0] > iv[1]:
        raise ConfigError(f"{where} must be [lo, hi] with 0 <= lo <= hi <= 1, got {shown(iv)}")


@dataclass
class SampleConfig:
    """Sampler settings shipped with a recipe (the CLI may override them); base of every
    method's own sampling settings."""

    sampler: str = setting("euler", "integrator", choices=SAMPLER_NAMES, label="integrator")
    steps: int = setting(50, "integration steps", label="integration steps")
    cfg: float = setting(1.0, "classifier-free guidance scale (1 = none)", label="guidance scale")
    cfg_schedule: str = setting(
        "constant", "guidance schedule: constant, or linear (ramps from 1 to cfg over the "
        "sampling progress)", choices=GUIDANCE_SCHEDULES, label="guidance schedule")
    cfg_interval: list[float] | None = setting(
        None, "guide only while the sampling progress (DiT: time, 0 = noise; E-CAR: stage / "
        "(stages - 1)) is in [LO, HI]; no unconditional pass elsewhere (default: everywhere)",
        metavar="LO,HI", label="guide only within (from,to)")
    noise_scale: float = setting(1.0, "euler_maruyama only: diffusion coefficient multiplier",
                                 label="noise scale")

    def validate(self) -> None:
        check_choice("sample.sampler", self.sampler, SAMPLER_NAMES)
        check_choice("sample.cfg_schedule", self.cfg_schedule, GUIDANCE_SCHEDULES)
        check_range("sample.steps", self.steps, 1)
        check_range("sample.cfg", self.cfg, 0, meaning="1 = no guidance, 0 = unconditional, > 1 = guided")
        check_range("sample.noise_scale", self.noise_scale, 0, meaning="0 = no noise")
        check_cfg_interval(self.cfg_interval)
