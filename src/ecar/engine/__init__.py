"""Generation loops: one-unit (DiT) and multistage autoregressive (E-CAR, FlowAR mode).

The loops take a network and resolved sampler settings; which loop a model uses, and how
its recipe's settings resolve, is its method's business (:mod:`ecar.methods`). Batching,
seeding and decoding for every caller: :func:`ecar.generate.generate_images`.
"""

from ecar.engine.multistage import StageSampleConfig, generate_multistage
from ecar.engine.single_unit import generate_single_unit

__all__ = ["StageSampleConfig", "generate_multistage", "generate_single_unit"]
