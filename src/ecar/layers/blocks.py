"""Transformer blocks with adaptive layer norm (adaLN-Zero, DiT §3.2) and the final projection."""

from __future__ import annotations

import torch
from torch import nn

from ecar.layers.attention import Attention, KVCache


def zero_init(linear: nn.Module) -> None:
    """Zero the weight and bias of a linear layer (adaLN-Zero: a block starts as the identity)."""
    assert isinstance(linear, nn.Linear)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, N, D); shift/scale: (B, D) or (B, N, D)."""
    if shift.dim() == 2:
        shift, scale = shift[:, None], scale[:, None]
    return x * (1 + scale) + shift


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AdaLNBlock(nn.Module):
    """Pre-norm attention + MLP block, modulated by a condition vector ``c``.

    ``c`` is (B, D) (one condition per sample, DiT) or (B, N, D) (one per token, E-CAR
    heads). The modulation projection is zero-initialised so each block starts as identity.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads, qk_norm=qk_norm)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        zero_init(self.ada[1])

    def modulation(self, c: torch.Tensor | None, raw: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """The adaLN terms of condition c: shift, 1 + scale and gate of both sublayers, with a
        token axis (a caller that reuses one c may keep them). ``raw``: ``ada(c)`` (…, 6·D)
        when the caller has it already (e.g. summed from separately computed parts)."""
        mod = (self.ada(c) if raw is None else raw).chunk(6, dim=-1)
        if mod[0].dim() == 2:
            mod = [m[:, None] for m in mod]
        s1, g1, a1, s2, g2, a2 = mod
        return s1, 1 + g1, a1, s2, 1 + g2, a2

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mod: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        """``mod``: :meth:`modulation` of ``c``, when the caller has it already."""
        s1, g1, a1, s2, g2, a2 = mod if mod is not None else self.modulation(c)
        x = torch.addcmul(x, a1, self.attn(torch.addcmul(s1, self.norm1(x), g1), mask=mask, cache=cache))
        return torch.addcmul(x, a2, self.mlp(torch.addcmul(s2, self.norm2(x), g2)))


class AdaLNResBlock(nn.Module):
    """Residual MLP block with adaLN-Zero (MAR's per-token head block). x, c: (..., D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        zero_init(self.ada[1])

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, mod: torch.Tensor | None = None) -> torch.Tensor:
        """``mod``: the raw modulation ``ada(c)`` (…, 3·D), when the caller has it already."""
        shift, scale, gate = (self.ada(c) if mod is None else mod).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    """adaLN-modulated norm + zero-initialised linear projection to the output dim."""

    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, out)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        for lin in (self.linear, self.ada[1]):
            zero_init(lin)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None, mod: torch.Tensor | None = None) -> torch.Tensor:
        """``mod``: the raw modulation ``ada(c)`` (…, 2·D), when the caller has it already."""
        shift, scale = (self.ada(c) if mod is None else mod).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))
