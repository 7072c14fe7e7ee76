"""Generation methods behind one protocol (:class:`Method`) and a registry.

``dit`` (:mod:`ecar.methods.dit`), ``ecar`` and ``flowar`` (:mod:`ecar.methods.ecar`).
Outside this package, code finds a model's method with :func:`method_of` and uses the
protocol only.
"""

from ecar.methods.base import Method, scale_count, total_steps
from ecar.methods.registry import (
    DEFAULT_MODEL,
    METHODS,
    apply_sample_overrides,
    flag_overrides,
    method_named,
    method_of,
    model_names,
    resolve_model_config,
    resolve_sample_config,
    sampler_flags,
)

__all__ = [
    "DEFAULT_MODEL",
    "METHODS",
    "Method",
    "apply_sample_overrides",
    "flag_overrides",
    "method_named",
    "method_of",
    "model_names",
    "resolve_model_config",
    "resolve_sample_config",
    "sampler_flags",
    "scale_count",
    "total_steps",
]
