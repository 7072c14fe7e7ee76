"""ecar: efficient continuous-token autoregressive image generation (E-CAR) and its baselines."""

__version__ = "0.1.0"
