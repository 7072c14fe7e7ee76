"""AR: raster-order causal autoregression with a per-token flow head, and its drafting
(exact continuous speculative decoding; docs/speculative.md).

:mod:`~ecar.methods.ar.method` is the method, :mod:`~ecar.methods.ar.settings` its sampling
settings, :mod:`~ecar.methods.ar.draft` how a draft speeds it up (``ecar draft``).
"""

from ecar.methods.ar.draft import ARDrafting
from ecar.methods.ar.method import AR_METHOD, ENTRIES, ARMethod, ARObjective
from ecar.methods.ar.settings import ARSampleConfig

__all__ = ["AR_METHOD", "ARDrafting", "ARMethod", "ARObjective", "ARSampleConfig", "ENTRIES"]
