"""Generation loops: one-unit (DiT) and multistage autoregressive (E-CAR, FlowAR)."""

from ecar.engine.api import generate_images, labels_for

__all__ = ["generate_images", "labels_for"]
