"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def ema_decay(step: int, decay: float, warmup: bool) -> float:
    """Decay used after optimiser step ``step`` (0-based); with warm-up min(decay, (1+s)/(10+s))."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, for parameters and floating buffers.

    Sharded parameters (FSDP2 DTensors, :mod:`ecar.train.parallel`) are updated on this
    rank's shards: ``ema`` is sharded like ``model``, so no gather is needed.
    """
    e = [_local(p) for p in ema.parameters()]
    m = [_local(p.detach()) for p in model.parameters()]
    torch._foreach_mul_(e, decay)
    torch._foreach_add_(e, m, alpha=1 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (same storage), or ``t`` itself."""
    return t.to_local() if hasattr(t, "to_local") else t
