"""FLOP formulas for the attention kernels that PyTorch's ``FlopCounterMode`` does not count.

``F.scaled_dot_product_attention`` picks a kernel per device, and ``FlopCounterMode``
(torch 2.x) only knows formulas for the CUDA ones (flash, memory-efficient, cuDNN). On CPU
the call lands in ``aten._scaled_dot_product_flash_attention_for_cpu`` (with or without a
mask, with a KV cache where N_q ≠ N_k, with or without grad), which has no formula, so
attention counted **0 FLOPs** there. The math fallback (``SDPBackend.MATH``, dropout in
training) decomposes into ``bmm`` and is counted already.

Importing this module registers, once, the same convention that torch uses for the CUDA
kernels for every SDPA op that lacks a formula:

* forward: ``2·B·H_q·N_q·N_k·d_qk`` (Q·Kᵀ) ``+ 2·B·H_q·N_q·N_k·d_v`` (weights·V);
* backward: recomputed Q·Kᵀ, dV, dP, dQ and dK, i.e. ``2·B·H_q·N_q·N_k·(3·d_qk + 2·d_v)``.

H_q is the number of query heads (grouped-query attention broadcasts the K/V heads). A mask
does **not** reduce the count: with ``attn_mask`` (bool or additive — E-CAR's block-causal
mask included) the kernels compute the full N_q×N_k product and then discard the masked
entries. ``is_causal`` is counted in full too, as torch does for the CUDA kernels (a causal
kernel may skip blocks; this code base never sets it). Softmax, scaling and masking are
elementwise work and are not counted, like every other elementwise op.

An op that already has a formula (a CUDA kernel, or a CPU one in a later torch) is left
alone, so nothing is counted twice.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter

__all__ = ["REGISTERED", "attention_backward_flops", "attention_flops"]

_aten = torch.ops.aten

# SDPA kernels (forward, backward) that may lack a formula: the CPU flash kernel, the MPS
# math kernel and the kernel that out-of-tree backends (XPU, HPU, PrivateUse1) override.
_FORWARD = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_fused_attention_overrideable",
)
_BACKWARD = (
    "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_fused_attention_overrideable_backward",
)


def _dims(query_shape, key_shape, value_shape) -> tuple[int, int, int, int, int, int]:
    """(B, H_q, N_q, N_k, d_qk, d_v) of (B, H, N, d) shaped query/key/value."""
    if not (len(query_shape) == len(key_shape) == len(value_shape) == 4):
        raise ValueError(
            f"attention FLOPs need (B, heads, N, d) query/key/value, got {tuple(query_shape)}, "
            f"{tuple(key_shape)}, {tuple(value_shape)}"
        )
    b, h_q, n_q, d_qk = query_shape
    n_k, d_v = key_shape[2], value_shape[3]
    return b, h_q, n_q, n_k, d_qk, d_v


def attention_flops(query_shape, key_shape, value_shape) -> int:
    """FLOPs of softmax(Q·Kᵀ)·V without the elementwise part: 2·B·H·N_q·N_k·(d_qk + d_v)."""
    b, h, n_q, n_k, d_qk, d_v = _dims(query_shape, key_shape, value_shape)
    return 2 * b * h * n_q * n_k * (d_qk + d_v)


def attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape) -> int:
    """FLOPs of the attention backward: 2·B·H·N_q·N_k·(3·d_qk + 2·d_v).

    Q·Kᵀ recomputed (d_qk), dV = Pᵀ·dO (d_v), dP = dO·Vᵀ (d_v), dQ = dS·K (d_qk),
    dK = dSᵀ·Q (d_qk) — the terms torch counts for the CUDA kernels.
    """
    del grad_out_shape  # same (B, H_q, N_q, d_v) as the output; carries nothing new
    b, h, n_q, n_k, d_qk, d_v = _dims(query_shape, key_shape, value_shape)
    return 2 * b * h * n_q * n_k * (3 * d_qk + 2 * d_v)


def _forward_formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def _backward_formula(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                      **kwargs) -> int:
    return attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape)


def _register() -> tuple[str, ...]:
    done = []
    for names, formula in ((_FORWARD, _forward_formula), (_BACKWARD, _backward_formula)):
        for name in names:
            op = getattr(_aten, name, None)
            if op is None or op in flop_counter.flop_registry:
                continue  # not in this torch build, or torch counts it already
            flop_counter.register_flop_formula(op)(formula)
            done.append(name)
    return tuple(done)


REGISTERED: tuple[str, ...] = _register()
"""Names of the aten ops this module gave a formula to (in this torch build)."""
