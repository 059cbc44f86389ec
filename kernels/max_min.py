"""MaxMin kernels: ``y = scale * cat(relu(x), relu(-x))`` along a dim, forward and backward.

Layout: the launcher views a contiguous input as ``(outer, C, inner)`` (a free view); the output
is ``(outer, 2C, inner)``. Input element ``e = o * C * inner + t`` (``t < C * inner``) writes
``relu(x)`` at ``o * 2C * inner + t`` and ``relu(-x)`` ``C * inner`` further: both halves of one
outer slice are contiguous, so loads and stores are coalesced for any ``inner``.

Backward: ``dx = scale * (dy_pos * [x > 0] - dy_neg * [x < 0])`` (relu'(0) = 0, as in torch).
float16/bfloat16/float32 compute in float32, float64 in float64; a Python float ``scale``
reaches the kernel as float32, so the launcher scales float64 after the kernel, exactly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import INT32_LIMIT, launch, offsets, upcast

__all__ = ["max_min_backward", "max_min_forward"]

_BLOCK = 1024
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _max_min_fwd_kernel(p_x, p_y, n, slice_len, scale, BLOCK: tl.constexpr, INT64: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # a float64 scalar (Inductor) must not promote the math
    i_b = tl.program_id(0)
    o_e = offsets(i_b, BLOCK, INT64)
    m_e = o_e < n
    # slice_len = C * inner: the positive half of an outer slice, then the negative half.
    o_pos = (o_e // slice_len) * 2 * slice_len + o_e % slice_len
    b_x = upcast(tl.load(p_x + o_e, mask=m_e))
    b_pos = tl.maximum(b_x, 0.0) * scale
    b_neg = tl.maximum(-b_x, 0.0) * scale
    tl.store(p_y + o_pos, b_pos.to(p_y.dtype.element_ty), mask=m_e)
    tl.store(p_y + o_pos + slice_len, b_neg.to(p_y.dtype.element_ty), mask=m_e)


@triton.jit
def _max_min_bwd_kernel(p_dy, p_x, p_dx, n, slice_len, scale, BLOCK: tl.constexpr,
                        INT64: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # a float64 scalar (Inductor) must not promote the math
    i_b = tl.program_id(0)
    o_e = offsets(i_b, BLOCK, INT64)
    m_e = o_e < n
    o_pos = (o_e // slice_len) * 2 * slice_len + o_e % slice_len
    b_x = upcast(tl.load(p_x + o_e, mask=m_e))
    b_dpos = upcast(tl.load(p_dy + o_pos, mask=m_e))
    b_dneg = upcast(tl.load(p_dy + o_pos + slice_len, mask=m_e))
    b_dx = (tl.where(b_x > 0, b_dpos, 0.0) - tl.where(b_x < 0, b_dneg, 0.0)) * scale
    tl.store(p_dx + o_e, b_dx.to(p_dx.dtype.element_ty), mask=m_e)


def _slice_len(x: torch.Tensor, dim: int, who: str) -> int:
    if not 0 <= dim < x.dim():
        raise ValueError(f"{who}: dim must be in [0, {x.dim()}), got {dim}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{who}: x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    inner = 1
    for s in x.shape[dim:]:
        inner *= s
    return inner  # C * inner



def max_min_forward(x: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """``scale * cat(relu(x), relu(-x), dim)`` in one pass.

    Args:
        x: floating tensor.
        dim: the doubled dimension, in [0, x.dim()).
        scale: multiplies the output.

    Returns:
        A contiguous tensor with ``2 * x.shape[dim]`` entries along ``dim``.

    Examples:
        >>> y = max_min_forward(torch.randn(64, 128, 16, 16, device="cuda"), 1)  # doctest: +SKIP
        >>> y.shape  # torch.Size([64, 256, 16, 16])  # doctest: +SKIP
    """
    slice_len = _slice_len(x, dim, "max_min_forward")
    x = x.contiguous()
    shape = list(x.shape)
    shape[dim] *= 2
    y = torch.empty(shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    if n == 0:
        return y
    scale = float(scale)
    kernel_scale = 1.0 if x.dtype == torch.float64 else scale
    grid = (triton.cdiv(n, _BLOCK),)
    launch(_max_min_fwd_kernel)[grid](x, y, n, slice_len, kernel_scale, BLOCK=_BLOCK,
                                      INT64=4 * n >= INT32_LIMIT, num_warps=4)
    return y.mul_(scale) if kernel_scale != scale else y


def max_min_backward(dy: torch.Tensor, x: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Gradient of :func:`max_min_forward` w.r.t. ``x``.

    Args:
        dy: gradient of the output (``2 * x.shape[dim]`` entries along ``dim``).
        x: the forward input.
        dim: as in the forward.
        scale: as in the forward.

    Returns:
        A contiguous tensor shaped like ``x``.

    Examples:
        >>> x = torch.randn(64, 128, device="cuda")  # doctest: +SKIP
        >>> dx = max_min_backward(torch.ones(64, 256, device="cuda"), x, 1)  # sign(x)  # doctest: +SKIP
    """
    slice_len = _slice_len(x, dim, "max_min_backward")
    expected = list(x.shape)
    expected[dim] *= 2
    if list(dy.shape) != expected:
        raise ValueError(f"max_min_backward: dy must have shape {tuple(expected)}, got {tuple(dy.shape)}")
    x, dy = x.contiguous(), dy.contiguous()
    dx = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return dx
    scale = float(scale)
    kernel_scale = 1.0 if x.dtype == torch.float64 else scale
    grid = (triton.cdiv(n, _BLOCK),)
    launch(_max_min_bwd_kernel)[grid](dy, x, dx, n, slice_len, kernel_scale, BLOCK=_BLOCK,
                                      INT64=4 * n >= INT32_LIMIT, num_warps=4)
    return dx.mul_(scale) if kernel_scale != scale else dx
