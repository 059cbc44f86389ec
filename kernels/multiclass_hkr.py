"""Fused hinge / KR / HKR loss over logits: per-sample loss and its gradient in one pass.

Layout: ``x`` and ``target`` are (N, C) row-major (rows = samples, columns = classes). One
program owns BLOCK_N rows and walks the classes in BLOCK_C tiles; for each element it
computes the hinge and KR terms and their derivative, stores the derivative (scaled by 1/C)
and accumulates the row's loss. The backward of the loss is then ``grad * grad_output[:, None]``
(no second pass over the logits).

Per element (s = +1 if target > 0 else -1, w_h = pos_weight if target > 0 else 1,
w_kr = kr_pos[c] / kr_neg[c] by the sign, or the target itself when KR_FROM_TARGET):

    loss_i = 1/C * sum_c alpha * w_h * relu(m/2 - s x) - (1 - alpha) * w_kr * x
    dloss_i/dx_c = 1/C * (alpha * (-s w_h) * [m/2 - s x > 0] - (1 - alpha) * w_kr)

Numerics: computed in float32 for half inputs, in float64 for float64 inputs (the dtype of
the gradient buffer decides).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import launch

__all__ = ["multiclass_hkr_forward"]


@triton.jit
def _multiclass_hkr_fwd_kernel(
    p_x, p_t, p_kpos, p_kneg, p_loss, p_grad,
    N, C, stride_x, stride_t, stride_g,
    alpha, half_margin, pos_weight, inv_c,
    KR_FROM_TARGET: tl.constexpr, STORE_GRAD: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    i_n = tl.program_id(0)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    dt = p_loss.dtype.element_ty  # compute dtype (float32, or float64 for float64 inputs)
    # Scalars arrive as float32 (eager) or float64 (Inductor): pin them to the compute dtype.
    alpha = tl.cast(alpha, dt)
    half_margin = tl.cast(half_margin, dt)
    pos_weight = tl.cast(pos_weight, dt)
    inv_c = tl.cast(inv_c, dt)
    b_acc = tl.zeros([BLOCK_N], dtype=dt)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        m = m_n[:, None] & m_c[None, :]
        b_x = tl.load(p_x + o_n[:, None] * stride_x + o_c[None, :], mask=m, other=0.0).to(dt)
        b_t = tl.load(p_t + o_n[:, None] * stride_t + o_c[None, :], mask=m, other=0).to(dt)
        is_pos = b_t > 0
        b_sign = tl.where(is_pos, 1.0, -1.0).to(dt)
        b_wh = tl.where(is_pos, pos_weight, 1.0).to(dt)
        b_margin = half_margin - b_sign * b_x
        if KR_FROM_TARGET:
            b_wkr = b_t
        else:
            b_kpos = tl.load(p_kpos + o_c, mask=m_c, other=0.0).to(dt)
            b_kneg = tl.load(p_kneg + o_c, mask=m_c, other=0.0).to(dt)
            b_wkr = tl.where(is_pos, b_kpos[None, :], b_kneg[None, :])
        b_val = alpha * b_wh * tl.maximum(b_margin, 0.0) - (1.0 - alpha) * b_wkr * b_x
        b_acc += tl.sum(tl.where(m, b_val, 0.0), axis=1)
        if STORE_GRAD:
            # relu'(0) = 0, as torch's autograd.
            b_g = alpha * tl.where(b_margin > 0, -b_sign * b_wh, 0.0) - (1.0 - alpha) * b_wkr
            tl.store(p_grad + o_n[:, None] * stride_g + o_c[None, :], (b_g * inv_c).to(dt), mask=m)
    tl.store(p_loss + o_n, b_acc * inv_c, mask=m_n)


def multiclass_hkr_forward(x: torch.Tensor, target: torch.Tensor, kr_pos: torch.Tensor, kr_neg: torch.Tensor,
                           alpha: float, min_margin: float, pos_weight: float, kr_from_target: bool,
                           need_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the fused kernel; see the module docstring for the formula.

    Args:
        x: logits (N, C), floating.
        target: labels (N, C), same device; positive where > 0.
        kr_pos: KR weight of positive labels per class (C,) (unused when kr_from_target).
        kr_neg: KR weight of negative labels per class (C,) (unused when kr_from_target).
        alpha: hinge weight in [0, 1] (KR weight 1 - alpha).
        min_margin: the margin m (the hinge acts below m / 2).
        pos_weight: weight of the hinge of positive labels.
        kr_from_target: use ``target`` itself as the KR weight (labels preprocessed for multi-GPU).
        need_grad: store the gradient (otherwise an empty (0, C) tensor is returned for it).

    Returns:
        ``(loss, grad)``: per-sample loss (N,) and d loss_i / d x (N, C), in float32 for
        half inputs and in the dtype of ``x`` otherwise.
    """
    if x.dim() != 2 or target.shape != x.shape:
        raise ValueError(f"multiclass_hkr_forward: expected x and target of the same shape (N, C), "
                         f"got {tuple(x.shape)} and {tuple(target.shape)}")
    n, c = x.shape
    x = x.contiguous()
    target = (target.to(torch.uint8) if target.dtype == torch.bool else target).contiguous()
    kr_pos, kr_neg = kr_pos.contiguous(), kr_neg.contiguous()
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    loss = torch.empty((n,), device=x.device, dtype=dtype)
    grad = torch.empty((n, c) if need_grad else (0, c), device=x.device, dtype=dtype)
    block_c = min(triton.next_power_of_2(max(c, 1)), 1024)
    block_n = max(1, min(triton.next_power_of_2(max(n, 1)), 4096 // block_c, 64))
    grid = (triton.cdiv(n, block_n),)
    launch(_multiclass_hkr_fwd_kernel)[grid](
        x, target, kr_pos, kr_neg, loss, grad,
        n, c, x.stride(0), target.stride(0), c,
        float(alpha), float(min_margin) / 2.0, float(pos_weight), 1.0 / float(c),
        KR_FROM_TARGET=bool(kr_from_target), STORE_GRAD=bool(need_grad),
        BLOCK_N=block_n, BLOCK_C=block_c,
    )
    return loss, grad
