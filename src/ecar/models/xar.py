"""xAR: next-X prediction with a block-causal flow-matching transformer
(Ren et al., arXiv 2502.20388; docs/xar.md).

The token grid (g×g tokens of dim D = C·p²) is split into *units*, the steps of the
autoregression: ``token`` (one token each), ``cell`` (k×k neighbouring tokens), ``scale``
(the tokens of one level of the coarse-to-fine pyramid, E-CAR's and FlowAR's grids 1, 2, 4,
…, g) or ``image`` (all tokens: one unit, DiT). The sequence lists the units' tokens unit
after unit (raster or column order of units, raster inside a cell; scales coarse to fine).

The network is one transformer that is its own velocity network (no separate head): a
token enters as ``Linear(x_i)`` + its 2-D sin-cos position (+ a learned level embedding for
scales); every block is adaLN-modulated *per unit*, by the embedding of that unit's time t_u
plus the label's, so the noise level of each context unit enters through the condition; a
token attends to the tokens of earlier units and of its own unit (block-causal mask). The
output is the velocity of every token. With one ``image`` unit the network is DiT's, module
for module (the same parameter names: a DiT loads its weights).

Sampling runs unit by unit: earlier units are clean (t = 1) and their keys/values are cached
once (:meth:`XAR.append_unit`); the unit being generated attends to the cache without
extending it (:meth:`XAR.unit_velocity`). A pure ``nn.Module``: noise, loss, guidance and the
loop live in :mod:`ecar.flow.next_x`, :mod:`ecar.engine.next_x` and :mod:`ecar.methods.xar`.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import Any, Sequence, cast

import torch
from torch import nn

from ecar.errors import ConfigError, shown
from ecar.layers import (AdaLNBlock, FinalLayer, KVCache, LabelEmbedder, TimestepEmbedder, grid_positions,
                         modulate, patchify, unpatchify)
from ecar.models.base import ClassConditional, TransformerConfig, init_input_layers
from ecar.schema import check_each

__all__ = ["UNITS", "UNIT_ORDERS", "XAR", "XARConfig"]

UNITS = ("token", "cell", "scale", "image")
UNIT_ORDERS = ("raster", "column")


@dataclass
class XARConfig(TransformerConfig):
    """xAR architecture (transformer fields from TransformerConfig) and its units."""

    name: str = "xar-tiny"
    unit: str = "cell"
    """What one autoregressive step predicts: ``token``, ``cell`` (``cell``×``cell`` tokens),
    ``scale`` (one level of the pyramid) or ``image`` (everything at once: DiT)."""
    cell: int = 2
    """Side k of a cell in tokens (``unit: cell``); must divide the token grid."""
    order: str = "raster"
    """Order of the units for ``token`` and ``cell``: ``raster`` (row by row) or ``column``."""
    stages: list[int] | None = None
    """``unit: scale``: token grids coarse to fine (e.g. [1, 2, 4, 8]); None = 1, 2, 4, … g."""
    noisy_context: bool = True
    """Training only: context units are noised at their own times (xAR's noisy context
    learning); false = clean context through a two-stream sequence (the ablation)."""

    def validate(self) -> None:
        super().validate()
        if self.unit not in UNITS:
            raise ConfigError(f"model.unit={shown(self.unit)}; choose one of {', '.join(UNITS)}")
        if self.order not in UNIT_ORDERS:
            raise ConfigError(f"model.order={shown(self.order)}; choose one of {', '.join(UNIT_ORDERS)}")
        if not isinstance(self.cell, int) or self.cell < 1:
            raise ConfigError(f"model.cell must be an integer >= 1 (the cell side in tokens), got {shown(self.cell)}")
        if not isinstance(self.noisy_context, bool):
            raise ConfigError(f"model.noisy_context must be true or false, got {shown(self.noisy_context)}")
        st = self.stages
        check_each("model.stages", st, 1, meaning="a token grid")
        if st is not None and (not st or min(st) < 1 or any(b <= a or b % a for a, b in zip(st, st[1:]))):
            raise ConfigError(f"model.stages={shown(st)} is not valid: increasing token grids, each dividing "
                              "the next (e.g. [1, 2, 4, 8]), or null for 1, 2, 4, ... up to the full grid")

    def validate_latent(self, size: int) -> None:
        """The patch tiles the latent, a cell tiles the token grid, the scales end at it."""
        super().validate_latent(size)
        grid = size // self.patch
        if self.unit == "cell" and grid % self.cell:
            raise ConfigError(f"model.cell={self.cell} does not divide the {grid}×{grid} token grid (latent "
                              f"{size} / model.patch={self.patch}): choose a divisor of {grid}")
        if self.unit == "scale":
            if self.stages is None and grid & (grid - 1):
                raise ConfigError(f"the token grid {grid} is not a power of two, so the default scales 1, 2, "
                                  f"4, ... cannot reach it: set model.stages (ending at {grid})")
            if self.stages is not None and self.stages[-1] != grid:
                raise ConfigError(f"model.stages={shown(self.stages)} must end at the full token grid {grid}")

    def unit_grids(self, grid: int) -> list[int]:
        """Token grids of the scales (``unit: scale``), coarse to fine."""
        if self.stages is not None:
            return list(self.stages)
        return [2**i for i in range(grid.bit_length())]


def unit_layout(cfg: XARConfig, grid: int) -> tuple[list[int], list[int]]:
    """(perm, counts) for token / cell / image units: ``perm[i]`` is the raster index of the
    grid token at sequence position i; ``counts[u]`` the tokens of unit u."""
    if cfg.unit == "image":
        return list(range(grid * grid)), [grid * grid]
    k = 1 if cfg.unit == "token" else cfg.cell
    n = grid // k
    cells = [(r, c) for r in range(n) for c in range(n)]
    if cfg.order == "column":
        cells = [(r, c) for c in range(n) for r in range(n)]
    perm = [(r * k + i) * grid + c * k + j for r, c in cells for i in range(k) for j in range(k)]
    return perm, [k * k] * len(cells)


class _Peek:
    """A read-only view of a :class:`KVCache` (its first ``rows`` rows): attention sees the
    cached keys/values followed by the new ones, and the cache stays as it was."""

    def __init__(self, cache: KVCache, rows: int):
        self.cache, self.rows = cache, rows

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache.k is None or self.cache.v is None:
            return k, v
        return (torch.cat([self.cache.k[: self.rows], k], dim=2), torch.cat([self.cache.v[: self.rows], v], dim=2))


class XAR(ClassConditional):
    """Block-causal velocity transformer over the units of a C×size×size latent.

    Sequence tensors are (B, L, D) with L = Σ_u n_u tokens in unit order (scales: Σ g_s²).
    """

    perm: torch.Tensor
    """(G²,) the grid position of every sequence position (buffer)."""
    unit_of: torch.Tensor
    """(L,) the unit of every sequence position (buffer)."""
    pos: torch.Tensor
    """(1, L, hidden) position embeddings in sequence order (buffer)."""

    def __init__(self, cfg: XARConfig, channels: int, size: int, num_classes: int):
        super().__init__()
        p = cfg.patch
        if size % p:
            raise ValueError(f"latent size {size} is not divisible by model.patch={p}")
        self.cfg, self.channels, self.size, self.num_classes = cfg, channels, size, num_classes
        self.grid = grid = size // p
        self.token_dim = token_dim = channels * p * p
        h = cfg.hidden
        if cfg.unit == "scale":
            grids = cfg.unit_grids(grid)
            if grids[-1] != grid:
                raise ValueError(f"the scales {grids} must end at the token grid {grid}")
            self.unit_sizes = [g * p for g in grids]       # latent side of each scale
            counts = [g * g for g in grids]
            pos = torch.cat([grid_positions(g, h, frame=grid) for g in grids])
            self.register_buffer("perm", torch.arange(grid * grid), persistent=False)
            self.level = nn.Embedding(len(grids), h)
            nn.init.normal_(self.level.weight, std=0.02)
        else:
            perm, counts = unit_layout(cfg, grid)
            self.unit_sizes = [size]
            self.register_buffer("perm", torch.tensor(perm), persistent=False)
            pos = grid_positions(grid, h)[self.perm]
        self.counts = counts
        self.register_buffer("unit_of", torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)),
                             persistent=False)
        self.embed = nn.Linear(token_dim, h)
        self.register_buffer("pos", pos[None], persistent=False)
        self.t_embed = TimestepEmbedder(h)
        self.y_embed = LabelEmbedder(num_classes, h)
        self.blocks = nn.ModuleList(AdaLNBlock(h, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.final = FinalLayer(h, token_dim)
        init_input_layers(self.embed, self.y_embed)

    @property
    def num_units(self) -> int:
        return len(self.counts)

    def starts(self) -> list[int]:
        """Sequence position of each unit's first token, and L at the end."""
        out = [0]
        for n in self.counts:
            out.append(out[-1] + n)
        return out

    # ------------------------------------------------------------------ latents <-> sequence
    def sequence(self, latents: list[torch.Tensor]) -> torch.Tensor:
        """The unit latents (``unit_sizes``: one (B, C, size, size), or one per scale) -> (B, L, D)."""
        if self.cfg.unit == "scale":
            return torch.cat([patchify(x, self.cfg.patch) for x in latents], dim=1)
        return patchify(latents[0], self.cfg.patch)[:, self.perm]

    def latent(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L', D) tokens of the first units (L' <= L) -> (B, C, size, size): the finest scale
        present (upsampled), or the grid with tokens not yet generated at 0."""
        b, n, p = seq.shape[0], seq.shape[1], self.cfg.patch
        if self.cfg.unit == "scale":
            s = max(u for u in range(self.num_units) if self.starts()[u + 1] <= n)
            side = self.unit_sizes[s]
            x = unpatchify(seq[:, self.starts()[s]:self.starts()[s + 1]], p, self.channels, side, side)
            return x.repeat_interleave(self.size // side, -2).repeat_interleave(self.size // side, -1)
        grid = seq.new_zeros(b, self.grid * self.grid, self.token_dim)
        grid[:, self.perm[:n]] = seq
        return unpatchify(grid, p, self.channels, self.size, self.size)

    # ------------------------------------------------------------------ the transformer
    def _embed(self, seq: torch.Tensor, start: int) -> torch.Tensor:
        h = self.embed(seq) + self.pos[:, start:start + seq.shape[1]]
        if self.cfg.unit == "scale":
            h = h + self.level(self.unit_of[start:start + seq.shape[1]])
        return h

    def _conditions(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """t (B, V) unit times, y (B,) -> (B, V, hidden): time embedding + label embedding."""
        b, v = t.shape
        return self.t_embed(t.reshape(-1)).reshape(b, v, -1) + self.y_embed(y)[:, None]

    def _blocks(self, h: torch.Tensor, c: torch.Tensor, which: torch.Tensor, mask: torch.Tensor | None = None,
                caches: Sequence[Any] | None = None) -> torch.Tensor:
        """h (B, n, hidden) embedded tokens; c (B, V, hidden) one condition per unit; ``which``
        (n,) the unit (index into V) of every token -> the blocks' output (B, n, hidden). The
        adaLN modulation is computed once per unit and gathered to its tokens (the arithmetic
        of :class:`AdaLNBlock`, whose modules it runs), so per-unit conditions cost no more than
        one per image."""
        for i, blk in enumerate(cast("list[AdaLNBlock]", self.blocks)):
            s1, g1, a1, s2, g2, a2 = blk.ada(c)[:, which].chunk(6, dim=-1)
            h = h + a1 * blk.attn(modulate(blk.norm1(h), s1, g1), mask=mask, cache=caches[i] if caches else None)
            h = h + a2 * blk.mlp(modulate(blk.norm2(h), s2, g2))
        return h

    def _trunk(self, h: torch.Tensor, c: torch.Tensor, which: torch.Tensor, mask: torch.Tensor | None = None,
               caches: Sequence[Any] | None = None) -> torch.Tensor:
        """:meth:`_blocks`, then the final layer (modulated per unit as well) -> (B, n, D)."""
        h = self._blocks(h, c, which, mask, caches)
        shift, scale = self.final.ada(c)[:, which].chunk(2, dim=-1)
        return self.final.linear(modulate(self.final.norm(h), shift, scale))

    def block_causal_mask(self, units: int, device=None) -> torch.Tensor:
        """Bool (L', L') over the first ``units`` units: i may attend j iff unit(j) <= unit(i)."""
        ids = self.unit_of[: self.starts()[units]].to(device)
        return ids[None, :] <= ids[:, None]

    def velocity_seq(self, seq: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One block-causal pass (training; sampling without a cache) over the first U' units.

        seq (B, L', D) their tokens, t (B, U') each unit's time, y (B,) labels (null =
        num_classes) -> velocity (B, L', D) of every token.
        """
        units = t.shape[1]
        mask = self.block_causal_mask(units, seq.device) if units > 1 else None
        return self._trunk(self._embed(seq, 0), self._conditions(t, y), self.unit_of[: seq.shape[1]], mask)

    def two_stream_mask(self, device=None) -> torch.Tensor:
        """Bool (2L, 2L) of :meth:`velocity_clean_context`: clean tokens of unit a see clean
        units <= a; noisy tokens of unit a see clean units < a and noisy unit a."""
        ids = self.unit_of.to(device)
        a, b = ids[:, None], ids[None, :]
        top = torch.cat([b <= a, torch.zeros_like(b <= a)], dim=1)
        bottom = torch.cat([b < a, b == a], dim=1)
        return torch.cat([top, bottom], dim=0)

    def velocity_clean_context(self, clean: torch.Tensor, noisy: torch.Tensor, t: torch.Tensor,
                               y: torch.Tensor) -> torch.Tensor:
        """The clean-context ablation in one pass: clean (B, L, D) at t = 1 and noisy (B, L, D)
        at the units' times t (B, U) -> velocity (B, L, D) of the noisy tokens, each unit
        conditioned on the *clean* earlier units, as in sampling."""
        U = self.num_units
        h = torch.cat([self._embed(clean, 0), self._embed(noisy, 0)], dim=1)
        c = self._conditions(torch.cat([torch.ones_like(t), t], dim=1), y)
        which = torch.cat([self.unit_of, self.unit_of + U])
        return self._trunk(h, c, which, self.two_stream_mask(clean.device))[:, clean.shape[1]:]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """All units at one time t (B,): x (B, C, size, size) -> velocity (B, C, size, size).

        Defined for the one-unit ``image`` layout only, where it is DiT's forward."""
        if self.num_units != 1:
            raise ValueError("XAR.forward is DiT's one-unit call; with several units use velocity_seq")
        v = self.velocity_seq(self.sequence([x]), t[:, None], y)
        return self.latent(v)

    # ------------------------------------------------------------------ cached sampling
    def new_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.blocks]

    def unit_velocity(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, u: int,
                      cache: list[KVCache]) -> torch.Tensor:
        """Velocity of unit u's tokens x (B, n_u, D) at time t (scalar or (B,)), attending the
        cached earlier units (the first B rows of the cache, which is not extended)."""
        b = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(b)[:, None]
        which = torch.zeros(x.shape[1], dtype=torch.long, device=x.device)
        peeks = [_Peek(kv, b) for kv in cache]
        return self._trunk(self._embed(x, self.starts()[u]), self._conditions(t, y), which, caches=peeks)

    def append_unit(self, x: torch.Tensor, y: torch.Tensor, u: int, cache: list[KVCache], t: float = 1.0) -> None:
        """Add unit u's tokens x (B, n_u, D) at time ``t`` (1 = clean) to the cache (units in order)."""
        times = torch.full((x.shape[0], 1), float(t), device=x.device)
        which = torch.zeros(x.shape[1], dtype=torch.long, device=x.device)
        self._blocks(self._embed(x, self.starts()[u]), self._conditions(times, y), which, caches=cache)
