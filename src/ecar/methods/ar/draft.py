"""AR's drafting: exact speculative decoding with a draft head (``ecar draft``, ``--draft``;
docs/speculative.md). :class:`ARDrafting` is what :attr:`ARMethod.drafting
<ecar.methods.ar.method.ARMethod.drafting>` declares.

The draft is the target itself with its velocity head replaced by a
:class:`~ecar.models.heads.MixtureHead`: the transformer (frozen, bit-identical to the
target's, so the engine reuses the target's passes for both heads) conditions a per-token
Gaussian mixture whose flow velocity is closed form, so proposing a token costs one small MLP
call and a few tensor operations per chain step instead of K head calls.

Distillation is on-policy and minimises the quantity the acceptance rate depends on: the
path KL(p‖q) between the target's guided Gaussian chain and the draft's,

    KL = Σ_k |m^p_k − m^q_k|² / (2·std_k²)      (exact for two chains with equal step stds),

averaged over the target's *own* chain paths. The prefixes are the target's own samples (a
pool drawn once by plain sampling, the chain's states where it stops early), since those are
what the draft conditions on when it is used; every position of a prefix is trained at once
(teacher forcing), with the guidance scale of its position.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, cast

import torch

from ecar.engine.causal import GuidedCausal, generate_causal
from ecar.engine.speculative import generate_speculative
from ecar.engine.speculative_cost import GammaMemory
from ecar.engine.speculative_residual import chain_means
from ecar.errors import ConfigError
from ecar.methods.ar.settings import ARSampleConfig, loop_settings
from ecar.methods.base import Drafting
from ecar.models.ar import AR, ARConfig
from ecar.samplers.chain import GaussianChain

__all__ = ["ARDrafting", "distill_draft_head", "draft_config", "make_draft_head", "target_pool"]


class ARDrafting(Drafting[AR, ARSampleConfig]):
    """AR's speculative decoding: a draft of the same token layout (a draft head on the
    target's own transformer from ``ecar draft``, or a smaller network of the method) proposes
    tokens and their Gaussian chains; the target verifies them (:mod:`ecar.engine.speculative`)."""

    description = "a Gaussian-mixture draft head on the target's own (frozen) transformer"
    page_settings = ("gamma",)

    def check_pair(self, target: ARConfig, draft: ARConfig) -> None:
        if target.patch != draft.patch:
            raise ConfigError(f"the draft checkpoint cannot propose tokens for the target: they differ in "
                              f"model.patch: target {target.patch!r}, draft {draft.patch!r}. Use a draft with "
                              "the target's token layout")

    def speculative(self, target: AR, draft: AR, sample: ARSampleConfig, labels: torch.Tensor,
                    generator: torch.Generator | None = None, memory: GammaMemory | None = None) -> dict:
        """``{"latents", "stats", "source"}`` (:func:`ecar.engine.speculative.generate_speculative`)."""
        settings = loop_settings(target, sample, target.cfg.context_time)
        if settings.sampler != "euler_maruyama" or not sample.temperature > 0 or not sample.noise_scale > 0:
            raise ConfigError(
                f"speculative decoding needs the head's Gaussian chain: sample.sampler=euler_maruyama with "
                f"temperature > 0 and noise_scale > 0 (got {sample.sampler}, {sample.temperature}, "
                f"{sample.noise_scale}); the ODE samplers have no path density to compare")
        return generate_speculative(target, draft, labels, settings, sample.gamma, sample.residual_batch, generator,
                                    verify=sample.verify, memory=memory)

    def check_settings(self, sample: ARSampleConfig) -> None:
        if sample.sampler != "euler_maruyama":
            raise ConfigError(f"speculative decoding samples the head's Gaussian chain (--sampler euler_maruyama); "
                              f"a draft for the {sample.sampler} ODE would never be used")

    def make_draft(self, target: AR, model_cfg: ARConfig, components: int, width: int,
                   seed: int = 0) -> tuple[AR, ARConfig]:
        return make_draft_head(target, model_cfg, components, width, seed)

    def distill(self, target: AR, draft: AR, sample: ARSampleConfig, steps: int, batch: int, lr: float,
                pool: int, seed: int = 0, on_step: Callable[[int, float], None] | None = None) -> dict:
        return distill_draft_head(target, draft, sample, steps=steps, batch=batch, lr=lr, pool=pool, seed=seed,
                                  on_step=on_step)


def draft_config(model_cfg: ARConfig, components: int = 32, width: int = 512) -> ARConfig:
    """The target's model config with a mixture head of ``components`` and an MLP ``width``."""
    out = copy.deepcopy(model_cfg)
    out.head_type, out.mixture_components, out.head_width = "mixture", components, width
    out.validate()
    return out


def make_draft_head(target: AR, model_cfg: ARConfig, components: int = 32, width: int = 512,
                    seed: int = 0) -> tuple[AR, ARConfig]:
    """A draft network: the target's transformer weights (frozen) and a fresh mixture head."""
    dcfg = draft_config(model_cfg, components, width)
    torch.manual_seed(seed)
    draft = AR(dcfg, target.channels, target.size, target.num_classes)
    state = {k: v for k, v in target.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"the target's transformer does not fit the draft: missing {missing}, unexpected {unexpected}")
    for name, p in draft.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return draft.to(next(target.parameters()).device), dcfg


@torch.no_grad()
def target_pool(target: AR, sample: ARSampleConfig, n: int, generator: torch.Generator,
                batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` plain samples of the target at ``sample``'s settings -> (what the transformer read:
    latents (n, C, H, W), labels (n,), cycling over the classes). Where the chain stops early
    that is the chain's states."""
    settings = loop_settings(target, sample, target.cfg.context_time)
    dev = next(target.parameters()).device
    labels = (torch.arange(n) % target.num_classes).to(dev)
    out = []
    for i in range(0, n, batch):
        res = generate_causal(target, labels[i:i + batch], settings, generator)
        out.append(res.get("context", res["latents"]))
    return torch.cat(out), labels


def _positions(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, D) -> (B, N) long: every position of every prefix."""
    b, n = tokens.shape[:2]
    return torch.arange(n, device=tokens.device).expand(b, n)


def _guided_chain(tnet: GuidedCausal, tokens: torch.Tensor, chain: GaussianChain, g: torch.Generator):
    """Transformer outputs on prefixes ``tokens`` (B, N, D) for ``tnet``'s labels (and their null
    half where guided: (B or 2B, N, hidden)), and the target's guided chain over every position:
    paths (B, N, K + 1, D), means (B, N, K, D)."""
    h = cast(AR, tnet.model).condition(torch.cat([tokens, tokens]) if tnet.doubled else tokens, None, tnet.labels)
    v = tnet.velocity(tnet.model.head_condition(h), _positions(tokens))
    noise = torch.randn(tokens.shape, generator=g, device=tokens.device)
    _, path, means = chain.sample(v, noise, g, record=True)
    return h, path, means


def path_kl(dnet: GuidedCausal, h: torch.Tensor, path: torch.Tensor, means: torch.Tensor,
            chain: GaussianChain) -> torch.Tensor:
    """(B, N, K): KL of each transition, target means vs the draft's guided means on the paths."""
    mq = chain_means(dnet, dnet.model.head_condition(h), _positions(path), chain, path[:, :, :-1])
    return (mq - means).pow(2).sum(-1) / (2 * chain.stds(path.device).pow(2))


def distill_draft_head(target: AR, draft: AR, sample: ARSampleConfig, steps: int = 4000,
                       batch: int = 8, lr: float = 1e-3, pool: int = 2000, seed: int = 0,
                       on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train ``draft``'s head (in place) on the target's own guided chains; returns
    {"losses": per-step mean path KL per token, "held_out_kl_per_step": (K,) list,
    "held_out_acceptance_proxy": the probability that step verification accepts a token's whole
    chain, E[Π_k (1 − TV_k)] over held-out tokens, where TV_k = erf(√KL_k / 2) is the total
    variation between the two Gaussian transitions of step k (equal stds)}."""
    settings = loop_settings(target, sample, target.cfg.context_time)
    chain, dev = settings.chain(), next(target.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)

    def nets(labels: torch.Tensor) -> tuple[GuidedCausal, GuidedCausal]:
        """Target and draft bound to ``labels`` with the sampled guidance (per position)."""
        return (GuidedCausal(target, labels, settings.guidance, target.num_tokens),
                GuidedCausal(draft, labels, settings.guidance, target.num_tokens))

    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    x, y = target_pool(target, sample, pool + 64, g)
    train_x, train_y, held_x, held_y = x[:pool], y[:pool], x[pool:], y[pool:]
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    draft.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(pool, (batch,), generator=g, device=dev)
        tnet, dnet = nets(train_y[idx])
        with torch.no_grad():
            h, path, means = _guided_chain(tnet, target.tokens(train_x[idx]), chain, g)
        loss = path_kl(dnet, h, path, means, chain).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:  # linear warm-up, cosine decay
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"draft distillation: the path KL became {losses[-1]} at step {step}; "
                                     "lower --lr")
        if on_step is not None:
            on_step(step, losses[-1])
    draft.eval()
    with torch.no_grad():
        tnet, dnet = nets(held_y)
        h, path, means = _guided_chain(tnet, target.tokens(held_x), chain, g)
        kl = path_kl(dnet, h, path, means, chain)
    return {"losses": losses, "held_out_kl_per_step": [float(v) for v in kl.mean((0, 1))],
            "held_out_acceptance_proxy": float((1 - torch.erf(kl.sqrt() / 2)).prod(-1).mean())}
