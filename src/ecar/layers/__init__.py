"""Reusable layers: attention with KV cache, adaLN blocks, embeddings, patchify."""

from ecar.layers.attention import Attention, KVCache
from ecar.layers.blocks import AdaLNBlock, AdaLNResBlock, FinalLayer, Mlp, modulate, zero_init
from ecar.layers.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    grid_positions,
    sincos_2d,
    sinusoidal_features,
)
from ecar.layers.patchify import patchify, unpatchify, upsample

__all__ = [
    "AdaLNBlock",
    "AdaLNResBlock",
    "Attention",
    "FinalLayer",
    "KVCache",
    "LabelEmbedder",
    "Mlp",
    "TimestepEmbedder",
    "grid_positions",
    "modulate",
    "patchify",
    "sincos_2d",
    "sinusoidal_features",
    "unpatchify",
    "upsample",
    "zero_init",
]
