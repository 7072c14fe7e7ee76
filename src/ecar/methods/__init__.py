"""Generation methods behind one protocol (:class:`Method`) and a registry.

``dit`` (:mod:`ecar.methods.dit`), ``ecar`` and ``flowar`` (:mod:`ecar.methods.ecar`),
``mar`` (:mod:`ecar.methods.mar`), ``ar`` (:mod:`ecar.methods.ar`, which can be drafted),
``xar`` (:mod:`ecar.methods.xar`).
Outside this package, code finds a model's method with :func:`method_of` and uses the
protocol only.
"""

from ecar.methods.base import Drafting, Method, scale_count, total_steps
from ecar.methods.registry import (
    DEFAULT_MODEL,
    METHODS,
    apply_sample_overrides,
    drafted_methods,
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
    "Drafting",
    "Method",
    "apply_sample_overrides",
    "drafted_methods",
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
