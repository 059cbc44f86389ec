"""Frobenius normalization kernels: ``y = x / max(||x||, eps)`` per row of a (R, K) view.

R = 1 normalizes the whole tensor; R = out_features normalizes each output neuron. Math in
float32 (float64 for float64 inputs); the output keeps the input dtype.

Backward of ``y = x / n`` with ``n = max(||x||, eps)``:
``grad_x = (g - y <g, y>) / n = g / n - x <g, x> / n^3`` (the second term vanishes where the
norm is clamped to eps). The backward recomputes ``||x||`` and ``<g, x>`` in one pass.

Variants: "fused" runs one program per row (pass 1 reduces, pass 2 scales; the row is read
twice, the second time from cache); "split" spreads long rows over many programs: one launch
writes per-chunk partial sums, a second one reduces the few partials of its row and scales
its chunk.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import acc, launch

__all__ = ["frobenius_forward", "frobenius_backward"]

_FUSED_MAX_ROW = 8192  # longer rows go to the split variant unless there are many rows
_FUSED_MIN_ROWS = 256


@triton.jit
def _inv_norm(sq, eps, IS_FP64: tl.constexpr):
    """Return (1 / max(sqrt(sq), eps), 1 if the norm is not clamped else 0)."""
    norm = tl.sqrt(sq)
    eps = acc(tl.cast(eps, tl.float64), IS_FP64)
    return 1.0 / tl.maximum(norm, eps), (norm >= eps).to(norm.dtype)


@triton.jit
def _frobenius_fwd_fused_kernel(p_x, p_y, K, eps, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    i_r = tl.program_id(0).to(tl.int64)
    p_x += i_r * K
    p_y += i_r * K
    sq = acc(tl.zeros([BLOCK], dtype=tl.float32), IS_FP64)
    for s in range(0, K, BLOCK):
        o_k = s + tl.arange(0, BLOCK)
        b_x = acc(tl.load(p_x + o_k, mask=o_k < K, other=0.0), IS_FP64)
        sq += b_x * b_x
    inv, _ = _inv_norm(tl.sum(sq, axis=0), eps, IS_FP64)
    for s in range(0, K, BLOCK):
        o_k = s + tl.arange(0, BLOCK)
        m_k = o_k < K
        b_x = acc(tl.load(p_x + o_k, mask=m_k, other=0.0), IS_FP64)
        tl.store(p_y + o_k, (b_x * inv).to(p_y.dtype.element_ty), mask=m_k)


@triton.jit
def _frobenius_bwd_fused_kernel(p_g, p_x, p_dx, K, eps, IS_FP64: tl.constexpr, BLOCK: tl.constexpr):
    i_r = tl.program_id(0).to(tl.int64)
    p_g += i_r * K
    p_x += i_r * K
    p_dx += i_r * K
    sq = acc(tl.zeros([BLOCK], dtype=tl.float32), IS_FP64)
    gx = acc(tl.zeros([BLOCK], dtype=tl.float32), IS_FP64)
    for s in range(0, K, BLOCK):
        o_k = s + tl.arange(0, BLOCK)
        m_k = o_k < K
        b_x = acc(tl.load(p_x + o_k, mask=m_k, other=0.0), IS_FP64)
        b_g = acc(tl.load(p_g + o_k, mask=m_k, other=0.0), IS_FP64)
        sq += b_x * b_x
        gx += b_g * b_x
    inv, unclamped = _inv_norm(tl.sum(sq, axis=0), eps, IS_FP64)
    c = tl.sum(gx, axis=0) * inv * inv * inv * unclamped
    for s in range(0, K, BLOCK):
        o_k = s + tl.arange(0, BLOCK)
        m_k = o_k < K
        b_x = acc(tl.load(p_x + o_k, mask=m_k, other=0.0), IS_FP64)
        b_g = acc(tl.load(p_g + o_k, mask=m_k, other=0.0), IS_FP64)
        tl.store(p_dx + o_k, (b_g * inv - b_x * c).to(p_dx.dtype.element_ty), mask=m_k)


@triton.jit
def _partial_sums_kernel(p_x, p_g, p_sq, p_gx, K, S, IS_FP64: tl.constexpr, HAS_G: tl.constexpr,
                         BLOCK: tl.constexpr):
    """Per (row, chunk): sum x^2 (and sum g x when HAS_G) into (R, S) partials; grid (S, R)."""
    i_s, i_r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_k = i_s * BLOCK + tl.arange(0, BLOCK)
    m_k = o_k < K
    b_x = acc(tl.load(p_x + i_r * K + o_k, mask=m_k, other=0.0), IS_FP64)
    tl.store(p_sq + i_r * S + i_s, tl.sum(b_x * b_x, axis=0))
    if HAS_G:
        b_g = acc(tl.load(p_g + i_r * K + o_k, mask=m_k, other=0.0), IS_FP64)
        tl.store(p_gx + i_r * S + i_s, tl.sum(b_g * b_x, axis=0))


@triton.jit
def _row_total(p_part, S, BLOCK_S: tl.constexpr):
    """Sum of the S partials of one row (every program of the row reduces the same few values)."""
    acc = tl.zeros([BLOCK_S], dtype=p_part.dtype.element_ty)
    for s in range(0, S, BLOCK_S):
        o_s = s + tl.arange(0, BLOCK_S)
        acc += tl.load(p_part + o_s, mask=o_s < S, other=0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _frobenius_fwd_split_kernel(p_x, p_y, p_sq, K, S, eps, IS_FP64: tl.constexpr, BLOCK: tl.constexpr,
                                BLOCK_S: tl.constexpr):
    i_s, i_r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    inv, _ = _inv_norm(_row_total(p_sq + i_r * S, S, BLOCK_S), eps, IS_FP64)
    o_k = i_s * BLOCK + tl.arange(0, BLOCK)
    m_k = o_k < K
    b_x = acc(tl.load(p_x + i_r * K + o_k, mask=m_k, other=0.0), IS_FP64)
    tl.store(p_y + i_r * K + o_k, (b_x * inv).to(p_y.dtype.element_ty), mask=m_k)


@triton.jit
def _frobenius_bwd_split_kernel(p_g, p_x, p_dx, p_sq, p_gx, K, S, eps, IS_FP64: tl.constexpr,
                                BLOCK: tl.constexpr, BLOCK_S: tl.constexpr):
    i_s, i_r = tl.program_id(0), tl.program_id(1).to(tl.int64)
    inv, unclamped = _inv_norm(_row_total(p_sq + i_r * S, S, BLOCK_S), eps, IS_FP64)
    c = _row_total(p_gx + i_r * S, S, BLOCK_S) * inv * inv * inv * unclamped
    o_k = i_s * BLOCK + tl.arange(0, BLOCK)
    m_k = o_k < K
    b_x = acc(tl.load(p_x + i_r * K + o_k, mask=m_k, other=0.0), IS_FP64)
    b_g = acc(tl.load(p_g + i_r * K + o_k, mask=m_k, other=0.0), IS_FP64)
    tl.store(p_dx + i_r * K + o_k, (b_g * inv - b_x * c).to(p_dx.dtype.element_ty), mask=m_k)


def _plan(x: torch.Tensor, variant: str | None, name: str) -> tuple[str, int, int]:
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty (R, K) tensor, got shape {tuple(x.shape)}")
    rows, k = x.shape
    variant = variant or ("fused" if k <= _FUSED_MAX_ROW or rows >= _FUSED_MIN_ROWS else "split")
    if variant not in ("fused", "split"):
        raise ValueError(f"{name}: variant must be 'fused', 'split' or None, got {variant!r}")
    block = min(2048, triton.next_power_of_2(k))
    return variant, block, 8 if block >= 2048 else 4


def frobenius_forward(x: torch.Tensor, eps: float, variant: str | None = None) -> torch.Tensor:
    """Normalize each row of ``x`` (R, K) by its l2 norm, floored at ``eps``.

    Args:
        x: (R, K) tensor, any floating dtype.
        eps: floor of the norm.
        variant: "fused" (one program per row), "split" (chunks of rows), or None (by size).

    Returns:
        ``y`` (R, K), same dtype as ``x``.

    Examples:
        >>> y = frobenius_forward(torch.randn(512, 4608, device="cuda"), 1e-12)  # doctest: +SKIP
        >>> y.norm(dim=1)  # all ones  # doctest: +SKIP
    """
    variant, block, warps = _plan(x, variant, "frobenius_forward")
    x = x.contiguous()
    rows, k = x.shape
    is_fp64 = x.dtype == torch.float64
    y = torch.empty_like(x)
    if variant == "fused":
        launch(_frobenius_fwd_fused_kernel)[(rows,)](
            x, y, k, float(eps), IS_FP64=is_fp64, BLOCK=block, num_warps=warps)
        return y
    chunks = triton.cdiv(k, block)
    sq = torch.empty((rows, chunks), device=x.device, dtype=torch.float64 if is_fp64 else torch.float32)
    launch(_partial_sums_kernel)[(chunks, rows)](
        x, x, sq, sq, k, chunks, IS_FP64=is_fp64, HAS_G=False, BLOCK=block, num_warps=warps)
    launch(_frobenius_fwd_split_kernel)[(chunks, rows)](
        x, y, sq, k, chunks, float(eps), IS_FP64=is_fp64, BLOCK=block,
        BLOCK_S=min(1024, triton.next_power_of_2(chunks)), num_warps=warps)
    return y


def frobenius_backward(grad: torch.Tensor, x: torch.Tensor, eps: float,
                       variant: str | None = None) -> torch.Tensor:
    """Gradient of :func:`frobenius_forward` wrt ``x``: ``g / n - x <g, x> / n^3`` per row.

    Args:
        grad: (R, K) gradient of the output (any strides; made contiguous).
        x: (R, K) input of the forward.
        eps: floor of the norm used in the forward.
        variant: "fused", "split" or None, as in :func:`frobenius_forward`.

    Returns:
        ``grad_x`` (R, K), dtype of ``x``.

    Examples:
        >>> x = torch.randn(8, 100, device="cuda")  # doctest: +SKIP
        >>> dx = frobenius_backward(torch.ones_like(x), x, 1e-12)  # doctest: +SKIP
    """
    variant, block, warps = _plan(x, variant, "frobenius_backward")
    if grad.shape != x.shape:
        raise ValueError(f"frobenius_backward: grad shape {tuple(grad.shape)} != x shape {tuple(x.shape)}")
    x, grad = x.contiguous(), grad.contiguous()
    rows, k = x.shape
    is_fp64 = x.dtype == torch.float64
    dx = torch.empty_like(x)
    if variant == "fused":
        launch(_frobenius_bwd_fused_kernel)[(rows,)](
            grad, x, dx, k, float(eps), IS_FP64=is_fp64, BLOCK=block, num_warps=warps)
        return dx
    chunks = triton.cdiv(k, block)
    acc_dtype = torch.float64 if is_fp64 else torch.float32
    sq = torch.empty((rows, chunks), device=x.device, dtype=acc_dtype)
    gx = torch.empty((rows, chunks), device=x.device, dtype=acc_dtype)
    launch(_partial_sums_kernel)[(chunks, rows)](
        x, grad, sq, gx, k, chunks, IS_FP64=is_fp64, HAS_G=True, BLOCK=block, num_warps=warps)
    launch(_frobenius_bwd_split_kernel)[(chunks, rows)](
        grad, x, dx, sq, gx, k, chunks, float(eps), IS_FP64=is_fp64, BLOCK=block,
        BLOCK_S=min(1024, triton.next_power_of_2(chunks)), num_warps=warps)
    return dx
