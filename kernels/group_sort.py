"""GroupSort kernels: sort each group of ``group_size`` consecutive channels, forward and backward.

Layout: the launcher views a contiguous input as ``(outer, C, inner)`` (the sorted dim in the
middle; a free view) and splits C into ``C // G`` groups of G channels. One *row* is one group
at one (outer, inner) position: its G elements lie ``inner`` apart in memory. Rows are numbered
``r = (o * (C // G) + g) * inner + i``, so consecutive rows are consecutive ``i`` (coalesced
loads for images) or, when ``inner == 1``, consecutive groups (each row contiguous).

* G == 2 (:func:`_pair_fwd_kernel`): a compare-exchange, ``(min, max)``; no sort.
* G > 2 (:func:`_sort_fwd_kernel`): ``tl.sort`` over a ``(BLOCK_R, GP)`` tile, GP = next power of
  two >= G. Each element is sorted as one int64 *packed key*: the float32 value mapped to an
  order-preserving int32 in the high 32 bits, its position in the group in the low 32 bits.
  Sorting the keys sorts the values *stably* (ties keep their input order, like
  ``torch.sort(stable=True)``) and carries the permutation along; the value is recovered
  exactly from the key (the map is a bijection of the float32 bits; float16 and bfloat16
  round-trip exactly through float32). Padding lanes get the largest int64 and sort last.
* Backward: the permutation is recomputed from the saved input (one more sort; no int64
  index tensor is stored) and the output gradient is scattered back: ``dx[perm[j]] = dy[j]``.

The output (and gradient) is multiplied by ``scale`` (the k of a k-Lipschitz activation) in
float32 inside the kernel (float64 pairs: in float64 after it). float64 has no 32-bit order key:
the launcher refuses it for G > 2
(:func:`sort_supported`) and the op takes the torch reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import INT32_LIMIT, launch, offsets, upcast

__all__ = ["MAX_SORT_GROUP", "group_sort_backward", "group_sort_forward", "sort_supported"]

# Largest group the sorting kernel takes in one tile (a FullSort over more channels takes the
# torch reference): 8192 int64 keys per program.
MAX_SORT_GROUP = 8192
_TILE = 2048  # elements per program of the sorting kernel (BLOCK_R * GP)
_PAIR_BLOCK = 1024  # rows per program of the pair kernel


@triton.jit
def _row_base(o_r, G, inner):
    # Offset of the first element of row r (see the module docstring for the numbering).
    return (o_r // inner) * G * inner + o_r % inner


@triton.jit
def _pair_fwd_kernel(p_x, p_y, n_rows, inner, scale, BLOCK: tl.constexpr, INT64: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # a float64 scalar (Inductor) must not promote the math
    i_r = tl.program_id(0)
    o_r = offsets(i_r, BLOCK, INT64)
    m_r = o_r < n_rows
    o_a = _row_base(o_r, 2, inner)
    b_a = upcast(tl.load(p_x + o_a, mask=m_r))
    b_b = upcast(tl.load(p_x + o_a + inner, mask=m_r))
    # Swap only when strictly out of order: ties keep their order (a stable sort of two).
    b_swap = b_a > b_b
    b_lo = tl.where(b_swap, b_b, b_a) * scale
    b_hi = tl.where(b_swap, b_a, b_b) * scale
    tl.store(p_y + o_a, b_lo.to(p_y.dtype.element_ty), mask=m_r)
    tl.store(p_y + o_a + inner, b_hi.to(p_y.dtype.element_ty), mask=m_r)


@triton.jit
def _pair_bwd_kernel(p_dy, p_x, p_dx, n_rows, inner, scale, BLOCK: tl.constexpr,
                     INT64: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # a float64 scalar (Inductor) must not promote the math
    i_r = tl.program_id(0)
    o_r = offsets(i_r, BLOCK, INT64)
    m_r = o_r < n_rows
    o_a = _row_base(o_r, 2, inner)
    b_a = upcast(tl.load(p_x + o_a, mask=m_r))
    b_b = upcast(tl.load(p_x + o_a + inner, mask=m_r))
    b_swap = b_a > b_b  # the forward's decision, recomputed
    b_dlo = upcast(tl.load(p_dy + o_a, mask=m_r)) * scale
    b_dhi = upcast(tl.load(p_dy + o_a + inner, mask=m_r)) * scale
    tl.store(p_dx + o_a, tl.where(b_swap, b_dhi, b_dlo).to(p_dx.dtype.element_ty), mask=m_r)
    tl.store(p_dx + o_a + inner, tl.where(b_swap, b_dlo, b_dhi).to(p_dx.dtype.element_ty), mask=m_r)


@triton.jit
def _sorted_keys(p_x, o_x, m_x, o_j):
    """Load a (BLOCK_R, GP) tile and sort it as packed (order key, position) int64 keys."""
    b_x = tl.load(p_x + o_x, mask=m_x, other=0.0).to(tl.float32)
    b_x = tl.where(b_x == 0.0, 0.0, b_x)  # -0.0 -> +0.0: zeros tie (and stay stable) as in torch
    b_bits = b_x.to(tl.int32, bitcast=True)
    # Negative floats order reversed as integers: flip their 31 magnitude bits.
    b_key = b_bits ^ ((b_bits >> 31) & 0x7FFFFFFF)
    b_packed = (b_key.to(tl.int64) << 32) | o_j[None, :].to(tl.int64)
    b_packed = tl.where(m_x, b_packed, 0x7FFFFFFFFFFFFFFF)  # padding lanes sort last
    return tl.sort(b_packed, 1)


@triton.jit
def _sort_fwd_kernel(p_x, p_y, n_rows, inner, scale, G: tl.constexpr, GP: tl.constexpr,
                     BLOCK_R: tl.constexpr, INT64: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # a float64 scalar (Inductor) must not promote the math
    i_r = tl.program_id(0)
    o_r = offsets(i_r, BLOCK_R, INT64)
    o_j = tl.arange(0, GP)
    m_x = (o_r < n_rows)[:, None] & (o_j < G)[None, :]
    o_x = _row_base(o_r, G, inner)[:, None] + o_j[None, :].to(o_r.dtype) * inner
    b_sorted = _sorted_keys(p_x, o_x, m_x, o_j)
    b_key = (b_sorted >> 32).to(tl.int32)
    b_y = (b_key ^ ((b_key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True) * scale
    tl.store(p_y + o_x, b_y.to(p_y.dtype.element_ty), mask=m_x)


@triton.jit
def _sort_bwd_kernel(p_dy, p_x, p_dx, n_rows, inner, scale, G: tl.constexpr, GP: tl.constexpr,
                     BLOCK_R: tl.constexpr, INT64: tl.constexpr):
    scale = tl.cast(scale, tl.float32)  # a float64 scalar (Inductor) must not promote the math
    i_r = tl.program_id(0)
    o_r = offsets(i_r, BLOCK_R, INT64)
    o_j = tl.arange(0, GP)
    m_x = (o_r < n_rows)[:, None] & (o_j < G)[None, :]
    o_row = _row_base(o_r, G, inner)[:, None]
    o_x = o_row + o_j[None, :].to(o_r.dtype) * inner
    b_sorted = _sorted_keys(p_x, o_x, m_x, o_j)
    # Output position j holds input position perm[j]: scatter dy[j] to dx[perm[j]]. Real lanes
    # sort before padding, so the first G positions carry exactly the G real indices.
    b_perm = (b_sorted & 0xFFFFFFFF).to(o_r.dtype)
    b_dy = tl.load(p_dy + o_x, mask=m_x, other=0.0).to(tl.float32) * scale
    tl.store(p_dx + o_row + b_perm * inner, b_dy.to(p_dx.dtype.element_ty), mask=m_x)


def _as_3d(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int, int, int]:
    """View contiguous ``x`` as (outer, C, inner) around ``dim``; free for a contiguous tensor."""
    x = x.contiguous()
    channels = x.shape[dim]
    outer = 1
    for s in x.shape[:dim]:
        outer *= s
    return x, outer, channels, x.numel() // max(outer * channels, 1)


def sort_supported(x: torch.Tensor, group_size: int) -> bool:
    """Return True when the kernels take ``x`` with this group size (else use the reference).

    Args:
        x: the input tensor.
        group_size: the resolved group size.

    Returns:
        True for float16/bfloat16/float32 groups up to MAX_SORT_GROUP, any float dtype for groups <= 2.

    Examples:
        >>> sort_supported(torch.zeros(2, 8, dtype=torch.float64), 4)
        False
    """
    if group_size <= 2:
        return x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    return x.dtype in (torch.float16, torch.bfloat16, torch.float32) and group_size <= MAX_SORT_GROUP


def _check(x: torch.Tensor, group_size: int, dim: int, who: str) -> None:
    if not 0 <= dim < x.dim():
        raise ValueError(f"{who}: dim must be in [0, {x.dim()}), got {dim}")
    if group_size < 1 or x.shape[dim] % group_size != 0:
        raise ValueError(f"{who}: group_size must divide the {x.shape[dim]} channels of dim {dim}, "
                         f"got {group_size}")
    if not sort_supported(x, group_size):
        raise TypeError(f"{who}: no kernel for dtype {x.dtype} with group_size {group_size}")


def _launch(fwd: bool, x: torch.Tensor, dy: torch.Tensor | None, group_size: int, dim: int,
            scale: float) -> torch.Tensor:
    x, outer, channels, inner = _as_3d(x, dim)
    out = torch.empty_like(x)
    n_rows = outer * (channels // group_size) * inner
    if n_rows == 0:
        return out
    scale = float(scale)
    if group_size == 1:
        return out.copy_(x if fwd else dy.contiguous()).mul_(scale)
    args = (x, out) if fwd else (dy.contiguous(), x, out)
    # Offsets (also of masked padding lanes) stay below 3 * numel: int32 index math below that.
    int64 = 3 * x.numel() >= INT32_LIMIT
    if group_size == 2:
        # A Python float reaches the kernel as float32: float64 scales after, exactly.
        kernel_scale = 1.0 if x.dtype == torch.float64 else scale
        grid = (triton.cdiv(n_rows, _PAIR_BLOCK),)
        kernel = _pair_fwd_kernel if fwd else _pair_bwd_kernel
        launch(kernel)[grid](*args, n_rows, inner, kernel_scale, BLOCK=_PAIR_BLOCK, INT64=int64,
                             num_warps=4)
        return out.mul_(scale) if kernel_scale != scale else out
    gp = triton.next_power_of_2(group_size)
    block_r = max(1, _TILE // gp)
    if isinstance(n_rows, int):  # a SymInt (dynamic shapes under torch.compile) would get a guard
        block_r = min(block_r, triton.next_power_of_2(n_rows))
    grid = (triton.cdiv(n_rows, block_r),)
    kernel = _sort_fwd_kernel if fwd else _sort_bwd_kernel
    launch(kernel)[grid](*args, n_rows, inner, scale, G=group_size, GP=gp, BLOCK_R=block_r,
                         INT64=int64, num_warps=4 if gp * block_r <= 2048 else 8)
    return out



def group_sort_forward(x: torch.Tensor, group_size: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Sort each group of ``group_size`` consecutive entries along ``dim``, times ``scale``.

    Args:
        x: float16/bfloat16/float32 tensor (float64 too for group_size <= 2).
        group_size: G, divides ``x.shape[dim]``.
        dim: the sorted dimension, in [0, x.dim()).
        scale: multiplies the sorted values (in float32).

    Returns:
        A contiguous tensor shaped like ``x``.

    Examples:
        >>> y = group_sort_forward(torch.randn(64, 256, 32, 32, device="cuda"), 4, 1)  # doctest: +SKIP
    """
    _check(x, group_size, dim, "group_sort_forward")
    return _launch(True, x, None, group_size, dim, scale)


def group_sort_backward(dy: torch.Tensor, x: torch.Tensor, group_size: int, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Gradient of :func:`group_sort_forward` w.r.t. ``x``: ``dy`` scattered back by the sort order.

    Args:
        dy: gradient of the output, shaped like ``x``.
        x: the forward input (the permutation is recomputed from it).
        group_size: G, as in the forward.
        dim: as in the forward.
        scale: as in the forward.

    Returns:
        A contiguous tensor shaped like ``x``: ``dx``.

    Examples:
        >>> x = torch.randn(64, 256, device="cuda")  # doctest: +SKIP
        >>> dx = group_sort_backward(torch.ones_like(x), x, 2, 1)  # all ones  # doctest: +SKIP
    """
    _check(x, group_size, dim, "group_sort_backward")
    if dy.shape != x.shape:
        raise ValueError(f"group_sort_backward: dy must have the shape {tuple(x.shape)} of x, "
                         f"got {tuple(dy.shape)}")
    return _launch(False, x, dy, group_size, dim, scale)
