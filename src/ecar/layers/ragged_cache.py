"""A KV cache whose rows may stand at different sequence positions (speculative decoding).

:class:`~ecar.layers.attention.KVCache` appends the same number of tokens to every row. A
speculative round accepts a different number of tokens per image, so each row of the batch
has its own length. :class:`RaggedKVCache` keeps keys and values in a fixed buffer indexed by
position: a call writes the new tokens' keys at their positions (:func:`set_positions`
before the call) and returns the whole buffer; the caller's attention mask lets a query at
position p see the slots <= p only. Rolling back is free: slots past a row's accepted length are never
read before they are written again.
"""

from __future__ import annotations

import torch

__all__ = ["RaggedKVCache", "ragged_mask", "set_positions"]


class RaggedKVCache:
    """Keys/values (B, heads, capacity, head_dim) by position, for one attention layer.

    Same interface as :class:`~ecar.layers.attention.KVCache` (``extend``), so the shared
    attention blocks use it unchanged.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.label_terms: tuple | None = None
        """What a model keeps for one generation beside its cache (AR: the labels' embedding and
        adaLN modulations, computed at the first pass)."""

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, heads, L, head_dim) at the positions :func:`set_positions` gave; return
        the buffers."""
        if self.pos is None:
            raise RuntimeError("set_positions(caches, positions) must be called before each forward pass")
        b, h, _, d = k.shape
        if self.k is None or self.v is None:
            self.k = k.new_zeros(b, h, self.capacity, d)
            self.v = v.new_zeros(b, h, self.capacity, d)
        idx = self.pos[:, None, :, None].expand(b, h, -1, d)
        self.k.scatter_(2, idx, k)
        self.v.scatter_(2, idx, v)
        return self.k, self.v


def set_positions(caches: list[RaggedKVCache], pos: torch.Tensor) -> None:
    """Positions (B, L) long of the tokens the next ``extend`` of every cache of one pass writes,
    checked once for all of them (each must be in [0, capacity))."""
    capacity = caches[0].capacity
    lo, hi = pos.aminmax()
    if int(hi) >= capacity or int(lo) < 0:
        raise ValueError(f"positions must be in [0, {capacity}), got {int(lo)}..{int(hi)}")
    for cache in caches:
        cache.pos = pos


def ragged_mask(pos: torch.Tensor, capacity: int) -> torch.Tensor:
    """pos (B, L) -> bool (B, 1, L, capacity): a query at position p may attend to slots <= p."""
    slots = torch.arange(capacity, device=pos.device)
    return (slots[None, None, :] <= pos[:, :, None])[:, None]
