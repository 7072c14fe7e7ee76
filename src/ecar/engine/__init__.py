"""Generation loops: one unit (DiT), multistage (E-CAR, FlowAR mode), masked (MAR), causal
and speculative (AR), next-X (xAR).

The loops take a network and resolved sampler settings; which loop a model uses, and how
its recipe's settings resolve, is its method's business (:mod:`ecar.methods`). What a loop
needs of its network is a :class:`typing.Protocol` beside it (:class:`VelocityNet`,
:class:`MultistageNet`, :class:`~ecar.engine.masked.MaskedNet`,
:class:`~ecar.engine.causal.CausalNet`, :class:`~ecar.engine.next_x.NextXNet`), which the
networks of :mod:`ecar.models` satisfy (the type checker checks it where a method passes its
network to its loop). Batching, seeding and decoding for every caller: :mod:`ecar.pipeline`.
"""

from ecar.engine.multistage import MultistageNet, StageSampleConfig, generate_multistage
from ecar.engine.single_unit import VelocityNet, generate_single_unit

__all__ = ["MultistageNet", "StageSampleConfig", "VelocityNet", "generate_multistage", "generate_single_unit"]
