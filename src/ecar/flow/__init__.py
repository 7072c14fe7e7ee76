"""Flow matching: the linear path, time sampling, objectives (and E-CAR's stage pyramid)."""

from ecar.flow.objectives import FlowConfig, FlowMatchingObjective, MultistageObjective, drop_labels
from ecar.flow.paths import data_estimate, interpolate, noise_estimate, target_velocity
from ecar.flow.time import sample_time

__all__ = [
    "FlowConfig",
    "FlowMatchingObjective",
    "MultistageObjective",
    "data_estimate",
    "drop_labels",
    "interpolate",
    "noise_estimate",
    "sample_time",
    "target_velocity",
]
