"""AR: a causal raster-order transformer with MAR's per-token flow head (the "AR" variant of
MAR, Li et al., arXiv 2406.11838 §5.1, Table 1; docs/speculative.md).

Sequence layout: N = g×g positions in raster order. The input at position 0 is the class
embedding (the start token), at position i > 0 the linear embedding of token i − 1; each gets
a learned position embedding. Attention is causal, the class also enters through adaLN, and
the output at position i, plus a per-position head embedding, is the condition z of token i
— so z_i depends on the class and the tokens before i only. The head is the shared
per-token adaLN MLP (:class:`ecar.models.heads.TokenHead`, ``kind="mlp"``) MAR uses.

Generation runs position by position with a KV cache (:meth:`AR.step`); the cache is a
:class:`~ecar.layers.ragged_cache.RaggedKVCache`, so each image of a batch may stand at its
own position (speculative decoding accepts a different number of tokens per image). A pure
``nn.Module``: the loss, guidance and the loops live in :mod:`ecar.methods.ar` and
:mod:`ecar.engine.causal` / :mod:`ecar.engine.speculative`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, cast

import torch
from torch import nn

from ecar.errors import ConfigError, shown
from ecar.layers import AdaLNBlock, LabelEmbedder, grid_positions
from ecar.layers.ragged_cache import RaggedKVCache, ragged_mask, set_positions
from ecar.models.base import init_input_layers
from ecar.models.heads import MixtureHead, TokenGridNetwork, TokenHead, TokenHeadConfig
from ecar.schema import check_choice

__all__ = ["AR", "ARConfig", "HEAD_TYPES", "shares_transformer"]

HEAD_TYPES = ("flow", "mixture")


@dataclass
class ARConfig(TokenHeadConfig):
    """Causal AR architecture: transformer and per-token head fields (TokenHeadConfig)."""

    name: str = "ar-tiny"
    context_time: float = 1.0
    """Training: the transformer reads each earlier token noised to this flow time,
    t·x + (1 − t)·ε, as the Gaussian chain's state when sampling stops it early
    (``sample.chain_end``, which defaults to this); 1 = clean tokens."""

    head_type: str = "flow"
    """``flow``: MAR's per-token adaLN MLP velocity head; ``mixture``: a diagonal Gaussian
    mixture of ``mixture_components`` per token whose flow velocity is closed form
    (:class:`~ecar.models.heads.MixtureHead`; the speculative draft head, ``ecar draft``)."""
    mixture_components: int = 8

    def validate(self) -> None:
        super().validate()
        check_choice("model.head_type", self.head_type, HEAD_TYPES)
        if not isinstance(self.mixture_components, int) or self.mixture_components < 1:
            raise ConfigError(f"model.mixture_components must be an integer >= 1, got {shown(self.mixture_components)}")
        if not 0 < self.context_time <= 1:
            raise ConfigError(f"model.context_time must be in (0, 1], got {shown(self.context_time)}")


class AR(TokenGridNetwork):
    """Causal transformer + per-token head over C×size×size latents; tokens (B, N, D) with
    N = (size / patch)², D = C·patch²."""

    def __init__(self, cfg: ARConfig, channels: int, size: int, num_classes: int):
        super().__init__()
        self._set_grid(cfg, channels, size, num_classes)
        h = cfg.hidden
        self.embed = nn.Linear(self.token_dim, h)
        self.pos = nn.Parameter(grid_positions(self.grid, h)[None].clone())
        self.y_embed = LabelEmbedder(num_classes, h)
        self.blocks = nn.ModuleList(AdaLNBlock(h, cfg.heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(h, eps=1e-6)
        self.head_pos = nn.Parameter(torch.zeros(1, self.num_tokens, h))
        if cfg.head_type == "mixture":
            self.head = MixtureHead(self.token_dim, h, cfg.head_width, cfg.mixture_components)
        else:
            self.head = TokenHead(self.token_dim, h, cfg.head_width, cfg.head_depth, kind="mlp")
        init_input_layers(self.embed)
        nn.init.normal_(self.head_pos, std=0.02)
        nn.init.normal_(self.y_embed.table.weight, std=0.02)

    def _inputs(self, prev: torch.Tensor, pos: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """prev (B, L, D) the token before each position (ignored at position 0), pos (B, L)."""
        at = pos.clamp(max=self.num_tokens - 1)
        start = (pos == 0)[..., None]
        h = torch.where(start, c[:, None].to(prev.dtype), self.embed(prev))
        return h + self.pos[0][at]

    def _out(self, h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return self.norm(h) + self.head_pos[0][pos.clamp(max=self.num_tokens - 1)]

    def condition(self, tokens: torch.Tensor, mask: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        """Training: tokens (B, N, D), y (B,) labels (null = num_classes) -> z (B, N, hidden),
        z_i from the class and tokens < i (causal). ``mask`` is not read: every token is
        predicted (the signature of MAR's, so the masked loss serves both)."""
        b, n, _ = tokens.shape
        pos = torch.arange(n, device=tokens.device).expand(b, n)
        c = self.y_embed(y)
        prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        h = self._inputs(prev, pos, c)
        causal = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()
        for blk in self.blocks:
            h = blk(h, c, mask=causal)
        return self._out(h, pos)

    def new_caches(self, capacity: int) -> list[RaggedKVCache]:
        """One empty ragged cache per block, for positions < ``capacity`` (>= N)."""
        return [RaggedKVCache(capacity) for _ in self.blocks]

    def step(self, prev: torch.Tensor, pos: torch.Tensor, y: torch.Tensor,
             caches: list[RaggedKVCache]) -> torch.Tensor:
        """Generation: the conditions of L consecutive positions per image, with the cache.

        prev (B, L, D): the token before each position (row 0 of position 0 is not read),
        pos (B, L) long: positions (rows may differ; positions >= N are allowed up to the
        caches' capacity and give conditions that mean nothing), y (B,) -> z (B, L, hidden).
        Every earlier position of a row must have been written by an earlier call.
        """
        c, mods = self._label_terms(y, caches)
        h = self._inputs(prev, pos, c)
        set_positions(caches, pos)
        mask = ragged_mask(pos, caches[0].capacity)
        for blk, cache, mod in zip(self.blocks, caches, mods):
            h = blk(h, c, mask=mask, cache=cache, mod=mod)
        return self._out(h, pos)

    def _label_terms(self, y: torch.Tensor, caches: list[RaggedKVCache]) -> tuple[torch.Tensor, list]:
        """The class embedding of labels y and every block's adaLN modulation of it: computed at
        a generation's first pass and kept with its caches (the labels are the same tensor for
        every pass of one generation; other labels are recomputed)."""
        memo = caches[0].label_terms
        if memo is None or memo[0] is not y:
            c = self.y_embed(y)
            memo = (y, c, [cast(AdaLNBlock, blk).modulation(c) for blk in self.blocks])
            caches[0].label_terms = memo
        return memo[1], memo[2]


class _WithState(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...


def shares_transformer(a: _WithState, b: _WithState) -> bool:
    """Whether two AR networks have the same transformer (every parameter and buffer outside
    ``head.`` equal): then one's conditions are the other's, and a draft head on the target's
    transformer can reuse the target's passes."""
    sa, sb = a.state_dict(), b.state_dict()
    ka = [k for k in sa if not k.startswith("head.")]
    if ka != [k for k in sb if not k.startswith("head.")]:
        return False
    return all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in ka)
