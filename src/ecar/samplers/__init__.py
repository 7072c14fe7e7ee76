"""ODE/SDE integrators and classifier-free guidance."""

from ecar.samplers.guidance import guidance_scale, guided
from ecar.samplers.ode import (
    SAMPLERS,
    euler,
    euler_maruyama,
    evaluations_per_step,
    heun,
    integrate,
    time_grid,
)

__all__ = [
    "SAMPLERS",
    "euler",
    "euler_maruyama",
    "evaluations_per_step",
    "guidance_scale",
    "guided",
    "heun",
    "integrate",
    "time_grid",
]
