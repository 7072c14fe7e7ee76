"""The raster-order causal generation loop (the AR variant of MAR; docs/speculative.md).

Token i of every image is generated after tokens < i: the causal transformer runs one
position per call with a KV cache, and the per-token head samples the token from noise. With
``euler_maruyama`` the head is sampled by the Gaussian chain of
:mod:`ecar.samplers.chain` (noise at every step, including the last) — the sampler whose
path density speculative decoding (:mod:`ecar.engine.speculative`) compares, so plain and
speculative sampling of a target have the same distribution. ``euler`` / ``heun`` integrate
the head's ODE (no density: plain sampling only). ``time_power`` spaces the head's time grid
(finer near the data end); with ``chain_end`` < 1 the chain stops at that time, the next
tokens' transformer input is the chain's state there and the output token is finished by one
deterministic Euler step (:meth:`~ecar.samplers.chain.GaussianChain.finish`), which keeps
the path density speculative decoding compares.

Guidance doubles the batch (conditional + null label) through transformer and head and
mixes the velocities v_u + w_i·(v_c − v_u), with a scale w_i per token position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from ecar.engine.units import UnitReport
from ecar.samplers import SAMPLER_NAMES
from ecar.samplers.chain import GaussianChain, StepMean, power_grid
from ecar.samplers.temperature import integrate_at_temperature

__all__ = ["CausalNet", "CausalSampleConfig", "ChainHead", "GuidedCausal", "chain_token", "generate_causal"]


class ChainHead(Protocol):
    """What the causal loop needs of a per-token head: the transition means of a Gaussian chain
    on its velocity with its x-free terms computed once for every step
    (:meth:`~ecar.models.heads.TokenHead.chain_means`, :meth:`~ecar.models.heads.MixtureHead.chain_means`)."""

    def chain_means(self, zc: torch.Tensor, times: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    weights: torch.Tensor | None = None) -> Callable[[torch.Tensor, int], torch.Tensor]: ...


class CausalNet(Protocol):
    """What the causal loop (and speculative decoding) needs of a network
    (:class:`~ecar.models.ar.AR` satisfies it): N token positions of D values, a null class,
    ragged KV caches, one transformer step, and a per-token head."""

    num_tokens: int
    token_dim: int

    @property
    def null_class(self) -> int: ...

    @property
    def head(self) -> ChainHead: ...

    def new_caches(self, capacity: int) -> Sequence[Any]: ...

    def step(self, prev: torch.Tensor, pos: torch.Tensor, y: torch.Tensor, caches: Any) -> torch.Tensor: ...

    def head_condition(self, z: torch.Tensor) -> torch.Tensor: ...

    def velocity(self, x: torch.Tensor, u: torch.Tensor, zc: torch.Tensor) -> torch.Tensor: ...

    def latent(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class CausalSampleConfig:
    """What the causal loop needs, resolved by the method (:mod:`ecar.methods.ar`): the
    guidance scale per token position, the head's steps, integrator, SDE noise and temperature."""

    guidance: tuple[float, ...]
    steps: int
    sampler: str = "euler_maruyama"
    noise_scale: float = 1.0
    temperature: float = 1.0
    time_power: float = 1.0
    chain_end: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.temperature < 0 or self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"CausalSampleConfig: steps >= 1, temperature >= 0 and a sampler of "
                             f"{', '.join(SAMPLER_NAMES)}; got {self.steps}, {self.temperature}, {self.sampler!r}")
        if not self.time_power > 0 or not 0 < self.chain_end <= 1:
            raise ValueError(f"CausalSampleConfig: time_power > 0 and 0 < chain_end <= 1; got {self.time_power}, "
                             f"{self.chain_end}")
        if self.chain_end < 1 and self.sampler != "euler_maruyama":
            raise ValueError(f"chain_end < 1 stops the Gaussian chain early (sampler euler_maruyama); the "
                             f"{self.sampler} ODE integrates to t = 1")

    def chain(self) -> GaussianChain:
        """The head's Gaussian chain (raises ValueError where it has no density)."""
        return GaussianChain(self.steps, self.noise_scale, self.temperature, self.time_power, self.chain_end)


class GuidedCausal:
    """A causal network bound to labels and guidance: conditions with its own cache, and
    guided head velocities (rows of the conditional and the null half mixed per position)."""

    def __init__(self, model: CausalNet, labels: torch.Tensor, guidance: tuple[float, ...], capacity: int):
        n = model.num_tokens
        if len(guidance) != n:
            raise ValueError(f"one guidance scale per token position: {n}, got {len(guidance)}")
        self.model, self.batch = model, labels.shape[0]
        self.scales = torch.tensor(guidance, dtype=torch.float32, device=labels.device)
        self.doubled = bool((self.scales != 1.0).any())
        null = torch.full_like(labels, model.null_class)
        self.labels = torch.cat([labels, null]) if self.doubled else labels
        self.caches = model.new_caches(capacity)
        self.passes = self.head_calls = 0

    def hidden(self, prev: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """prev (B, L, D), pos (B, L) -> the transformer's outputs (B or 2B, L, hidden): one pass."""
        if self.doubled:
            prev, pos = torch.cat([prev, prev]), torch.cat([pos, pos])
        self.passes += 1
        return self.model.step(prev, pos, self.labels, self.caches)

    def condition(self, prev: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """prev (B, L, D), pos (B, L) -> projected head conditions (B or 2B, L, head_width)."""
        return self.model.head_condition(self.hidden(prev, pos))

    def _weights(self, pos: torch.Tensor) -> torch.Tensor:
        """Guidance scales (…, 1) of token positions pos (positions past N take the last one)."""
        return self.scales[pos.clamp(max=len(self.scales) - 1)][..., None]

    def velocity(self, zc: torch.Tensor, pos: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The guided head velocity v(x (B, M, D), t (B, M)) for rows with conditions zc
        (B or 2B, M, head_width) at token positions pos (B, M)."""
        w = self._weights(pos)

        def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self.head_calls += 1
            if not self.doubled:
                return self.model.velocity(x, t, zc)
            vc, vu = self.model.velocity(torch.cat([x, x]), torch.cat([t, t]), zc).chunk(2)
            return torch.lerp(vu, vc, w.to(x.dtype))  # vu + w·(vc − vu)

        return v

    def step_means(self, zc: torch.Tensor, pos: torch.Tensor, chain: GaussianChain) -> StepMean:
        """The guided step means of ``chain`` for rows with conditions zc (B or 2B, M, head_width)
        at token positions pos (B, M): the head (:class:`ChainHead`) prepares its x-free parts
        once for every step, both halves at once."""
        a, b = chain.coefficients(zc.device)
        m = self.model.head.chain_means(zc.unflatten(0, (2, -1)) if self.doubled else zc, chain.grid(zc.device)[:-1], a, b,
                        self._weights(pos) if self.doubled else None)

        def counted(x: torch.Tensor, k: int) -> torch.Tensor:
            self.head_calls += 1
            return m(x, k)

        return counted

    @staticmethod
    def rows(zc: torch.Tensor, index: torch.Tensor, doubled: bool) -> torch.Tensor:
        """The conditions of rows ``index`` (R,) of a (B or 2B, …) tensor, both halves kept."""
        if not doubled:
            return zc[index]
        c, u = zc.chunk(2)
        return torch.cat([c[index], u[index]])


def chain_token(net: GuidedCausal, chain: GaussianChain, zc: torch.Tensor, pos: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row by ``net``'s chain (plain decoding): conditions zc (B or 2B, 1, F) at
    positions pos (B, 1) -> (the chain's last state x_K, the output token), both (B, 1, D). The
    head's x-free terms are computed once for all steps (:meth:`GuidedCausal.step_means`).
    Draws: the start noise (B, 1, D), then the chain's K normals."""
    noise = torch.randn((pos.shape[0], 1, net.model.token_dim), generator=generator, device=pos.device)
    x = chain.sample_steps(net.step_means(zc, pos, chain), noise, generator)[0]
    return x, chain.finish(net.velocity(zc, pos), x)


@torch.no_grad()
def generate_causal(model: CausalNet, labels: torch.Tensor, settings: CausalSampleConfig,
                    generator: torch.Generator | None = None, return_stages: bool = False,
                    on_unit: Callable[[int, torch.Tensor], None] | None = None) -> dict:
    """labels (B,) -> {"latents": (B, C, H, W)} (and ``"context"``, the chain's states the
    transformer read, when the chain stops early); with ``return_stages`` also ``"stages"``,
    the latent after every token (tokens not yet generated are 0). ``on_unit(i, latent)``
    hears it as soon as token i exists.

    Draws per token, in order: the head's start noise (B, 1, D), then the sampler's draws.
    """
    B, N, D, dev = labels.shape[0], model.num_tokens, model.token_dim, labels.device
    net = GuidedCausal(model, labels, settings.guidance, N)
    chain = settings.chain() if settings.sampler == "euler_maruyama" else None
    grid = power_grid(settings.steps, settings.time_power, device=dev)
    tokens = torch.zeros(B, N, D, device=dev)
    context = torch.zeros(B, N, D, device=dev) if settings.chain_end < 1 else tokens
    report = UnitReport(return_stages, on_unit)
    for i in range(N):
        pos = torch.full((B, 1), i, dtype=torch.long, device=dev)
        prev = context[:, i - 1:i] if i else context[:, :1]
        zc = net.condition(prev, pos)
        if chain is not None:
            state, x = chain_token(net, chain, zc, pos, generator)
            if chain.finishes:  # later tokens condition on the chain's state; the output is finished
                context[:, i] = state[:, 0].to(context.dtype)
        else:
            v = net.velocity(zc, pos)
            noise = torch.randn((B, 1, D), generator=generator, device=dev)
            x = integrate_at_temperature(settings.sampler, lambda x, t: v(x, t.expand(B, 1)), noise, grid,
                                         generator, settings.noise_scale, settings.temperature)
        tokens[:, i] = x[:, 0].to(tokens.dtype)
        report.add(i, lambda: model.latent(tokens.clone()))  # tokens fill in place
    out = report.result(model.latent(tokens))
    if context is not tokens:
        out["context"] = model.latent(context)  # what later tokens were conditioned on
    return out
