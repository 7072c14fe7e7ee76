"""ODE/SDE integrators, classifier-free guidance and the sampler settings every method shares."""

from ecar.samplers.guidance import GUIDANCE_SCHEDULES, guidance_scale, guided
from ecar.samplers.ode import (
    SAMPLERS,
    euler,
    euler_maruyama,
    evaluations_per_step,
    heun,
    integrate,
    time_grid,
)
from ecar.samplers.stop import check_stop, stop_when
from ecar.samplers.settings import SAMPLER_NAMES, SampleConfig, check_cfg_interval

__all__ = [
    "GUIDANCE_SCHEDULES",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SampleConfig",
    "check_cfg_interval",
    "check_stop",
    "euler",
    "euler_maruyama",
    "evaluations_per_step",
    "guidance_scale",
    "guided",
    "heun",
    "integrate",
    "stop_when",
    "time_grid",
]
