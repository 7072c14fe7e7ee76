"""A speculative draft head for an ``ar`` target (``ecar draft``; docs/speculative.md).

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
from typing import Callable

import torch
from torch import nn

from ecar.config import Config
from ecar.engine.causal import GuidedCausal
from ecar.engine.speculative import chain_means
from ecar.generate import labels_for
from ecar.methods import method_of
from ecar.samplers.chain import GaussianChain

__all__ = ["distill_draft_head", "draft_config", "make_draft_head", "target_pool"]


def draft_config(cfg: Config, components: int = 32, width: int = 512) -> Config:
    """The target's config with a mixture head of ``components`` and an MLP ``width``."""
    out = copy.deepcopy(cfg)
    out.model.head_type, out.model.mixture_components, out.model.head_width = "mixture", components, width
    out.model.validate()
    return out


def make_draft_head(target: nn.Module, cfg: Config, components: int = 32, width: int = 512,
                    seed: int = 0) -> tuple[nn.Module, Config]:
    """A draft network: the target's transformer weights (frozen) and a fresh mixture head."""
    if method_of(cfg.model).name != "ar":
        raise ValueError(f"a draft head needs an ar target, got method {method_of(cfg.model).name!r}")
    dcfg = draft_config(cfg, components, width)
    torch.manual_seed(seed)
    draft = type(target)(dcfg.model, target.channels, target.size, target.num_classes)
    state = {k: v for k, v in target.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = draft.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ValueError(f"the target's transformer does not fit the draft: missing {missing}, unexpected {unexpected}")
    for name, p in draft.named_parameters():
        p.requires_grad_(name.startswith("head."))
    return draft.to(next(target.parameters()).device), dcfg


@torch.no_grad()
def target_pool(target: nn.Module, cfg: Config, sample, n: int, generator: torch.Generator,
                batch: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` plain samples of the target at ``sample``'s settings -> (what the transformer read:
    latents (n, C, H, W), labels (n,)). Where the chain stops early that is the chain's states."""
    method = method_of(cfg.model)
    dev = next(target.parameters()).device
    labels = labels_for(n, target.num_classes).to(dev)
    out = []
    for i in range(0, n, batch):
        res = method.generate(target, sample, labels[i:i + batch], generator)
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
    h = tnet.model.condition(torch.cat([tokens, tokens]) if tnet.doubled else tokens, None, tnet.labels)
    v = tnet.velocity(tnet.model.head_condition(h), _positions(tokens))
    noise = torch.randn(tokens.shape, generator=g, device=tokens.device)
    _, path, means = chain.sample(v, noise, g, record=True)
    return h, path, means


def path_kl(dnet: GuidedCausal, h: torch.Tensor, path: torch.Tensor, means: torch.Tensor,
            chain: GaussianChain) -> torch.Tensor:
    """(B, N, K): KL of each transition, target means vs the draft's guided means on the paths."""
    mq = chain_means(dnet, dnet.model.head_condition(h), _positions(path), chain, path[:, :, :-1])
    return (mq - means).pow(2).sum(-1) / (2 * chain.stds(path.device).pow(2))


def distill_draft_head(target: nn.Module, draft: nn.Module, cfg: Config, sample, steps: int = 4000,
                       batch: int = 8, lr: float = 1e-3, pool: int = 2000, seed: int = 0,
                       on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train ``draft``'s head (in place) on the target's own guided chains; returns
    {"losses": per-step mean path KL per token, "held_out_kl_per_step": (K,) list,
    "held_out_acceptance_proxy": the probability that step verification accepts a token's whole
    chain, E[Π_k (1 − TV_k)] over held-out tokens, where TV_k = erf(√KL_k / 2) is the total
    variation between the two Gaussian transitions of step k (equal stds)}."""
    method = method_of(cfg.model)
    settings = method.loop_settings(target, sample)
    chain, dev = settings.chain(), next(target.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)

    def nets(labels: torch.Tensor) -> tuple[GuidedCausal, GuidedCausal]:
        """Target and draft bound to ``labels`` with the sampled guidance (per position)."""
        return (GuidedCausal(target, labels, settings.guidance, target.num_tokens),
                GuidedCausal(draft, labels, settings.guidance, target.num_tokens))

    target.eval()
    for p in target.parameters():
        p.requires_grad_(False)
    x, y = target_pool(target, cfg, sample, pool + 64, g)
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
