"""Householder product kernels: ``Q = H_1 ... H_r`` applied to a column block of the identity.

``H_i = I - s_i v_i v_i^T`` with ``s_i = 2 / max(||v_i||^2, eps)``; v is (r, d). Each program
owns a (d, BLOCK_C) column block of ``X = eye(d, cols)`` in registers and applies the r
reflections right to left (``X <- X - s_i v_i (v_i^T X)``, an elementwise product and a
reduction over d per reflection: exact float32 on GPU, no tf32), then keeps the first
``rows`` rows. Math in float32 (float64 for float64 inputs).

Backward (per column block, partial sums over blocks added atomically into grad v): with
``X_k = H_k X_{k+1}`` (``X_{r+1} = E``, output ``X_1[:rows]``) and ``G_k = dL/dX_k``,
``w = X_{k+1}^T v_k`` and ``z = G_k^T v_k``:

    dL/dv_k = -s_k (G_k w + X_{k+1} z) + s_k^2 (w . z) v_k      (last term only if unclamped)
    G_{k+1} = H_k G_k = G_k - s_k v_k z^T

The iterates are recomputed, not stored: the program first runs the forward to X_1, then
walks k = 1..r undoing one reflection at a time (``X_{k+1} = H_k X_k``: H_k is an
involution). That inverse is exact for rows with ``||v_k||^2 >= eps`` and for zero rows
(H = I); for 0 < ||v_k||^2 < eps (H_k is then not a reflection) the gradient is not exact.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import acc, launch

__all__ = ["householder_forward", "householder_backward", "HOUSEHOLDER_MAX_DIM"]

HOUSEHOLDER_MAX_DIM = 4096  # the (d, BLOCK_C) block lives in registers


@triton.jit
def _load_reflection(p_v, i, d, eps, o_d, m_d, IS_FP64: tl.constexpr):
    """Return (v_i, s_i, 1 if ||v_i||^2 >= eps else 0)."""
    b_v = acc(tl.load(p_v + i * d + o_d, mask=m_d, other=0.0), IS_FP64)
    sq = tl.sum(b_v * b_v, axis=0)
    eps = acc(tl.cast(eps, tl.float64), IS_FP64)
    return b_v, 2.0 / tl.maximum(sq, eps), (sq >= eps).to(sq.dtype)


@triton.jit
def _apply_all(p_v, X, r, d, eps, o_d, m_d, IS_FP64: tl.constexpr):
    """X <- H_1 (H_2 (... (H_r X))): reflections applied right to left."""
    for j in range(0, r):
        i = r - 1 - j
        b_v, s, _ = _load_reflection(p_v, i, d, eps, o_d, m_d, IS_FP64)
        b_w = tl.sum(b_v[:, None] * X, axis=0)
        X -= (s * b_v)[:, None] * b_w[None, :]
    return X


@triton.jit
def _identity_block(o_d, o_c, m_c, IS_FP64: tl.constexpr):
    return acc(((o_d[:, None] == o_c[None, :]) & m_c[None, :]).to(tl.float32), IS_FP64)


@triton.jit
def _householder_fwd_kernel(p_v, p_out, r, d, rows, cols, eps, IS_FP64: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    i_c = tl.program_id(0)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < d
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < cols
    X = _apply_all(p_v, _identity_block(o_d, o_c, m_c, IS_FP64), r, d, eps, o_d, m_d, IS_FP64)
    tl.store(p_out + o_d[:, None] * cols + o_c[None, :], X.to(p_out.dtype.element_ty),
             mask=(o_d < rows)[:, None] & m_c[None, :])


@triton.jit
def _householder_bwd_kernel(p_v, p_g, p_dv, r, d, rows, cols, eps, IS_FP64: tl.constexpr,
                            BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr):
    i_c = tl.program_id(0)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < d
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_c < cols
    # Recompute X_1 (all d rows), then walk forward through the product undoing reflections.
    X = _apply_all(p_v, _identity_block(o_d, o_c, m_c, IS_FP64), r, d, eps, o_d, m_d, IS_FP64)
    # G_1: the output gradient, zero in the rows the forward dropped.
    G = acc(tl.load(p_g + o_d[:, None] * cols + o_c[None, :], mask=(o_d < rows)[:, None] & m_c[None, :],
                     other=0.0), IS_FP64)
    for k in range(0, r):
        b_v, s, unclamped = _load_reflection(p_v, k, d, eps, o_d, m_d, IS_FP64)
        X -= (s * b_v)[:, None] * tl.sum(b_v[:, None] * X, axis=0)[None, :]  # X_{k+1} = H_k X_k
        b_w = tl.sum(b_v[:, None] * X, axis=0)
        b_z = tl.sum(b_v[:, None] * G, axis=0)
        b_dv = (-s * (tl.sum(G * b_w[None, :], axis=1) + tl.sum(X * b_z[None, :], axis=1))
                + (unclamped * s * s * tl.sum(b_w * b_z, axis=0)) * b_v)
        tl.atomic_add(p_dv + k * d + o_d, b_dv, mask=m_d)
        G -= (s * b_v)[:, None] * b_z[None, :]


def _plan(v: torch.Tensor, rows: int, cols: int, per_block: int, name: str,
          block_c: int | None) -> tuple[int, int, int]:
    if v.dim() != 2 or v.shape[1] != max(rows, cols) or min(rows, cols) < 1:
        raise ValueError(f"{name}: expected v of shape (r, max(rows, cols)), got {tuple(v.shape)} "
                         f"for {rows} x {cols}")
    d = v.shape[1]
    if d > HOUSEHOLDER_MAX_DIM:
        raise ValueError(f"{name}: d = {d} exceeds the kernel limit {HOUSEHOLDER_MAX_DIM}")
    block_d = triton.next_power_of_2(d)
    if block_c is None and v.device.type == "cpu":
        # Triton interpreter: its cost is per program and per op, not per element.
        block_c = triton.next_power_of_2(cols)
    elif block_c is None:
        # Enough column blocks to spread over the GPU, within the register budget of one block.
        block_c = max(2, min(per_block // block_d, 16, triton.next_power_of_2(triton.cdiv(cols, 128))))
    elif block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f"{name}: block_c must be a power of two, got {block_c}")
    warps = 8 if block_d * block_c >= 4096 else 4
    return block_d, block_c, warps


def householder_forward(v: torch.Tensor, rows: int, cols: int, eps: float,
                        block_c: int | None = None) -> torch.Tensor:
    """``(H_1 ... H_r)[:rows, :cols]`` from reflection vectors ``v`` (r, d), d = max(rows, cols).

    Args:
        v: (r, d) reflection vectors, any floating dtype (float64 computes in float64).
        rows: rows of the result.
        cols: columns of the result.
        eps: floor of ``||v_i||^2``.
        block_c: columns per program (a power of two), or None to choose by size and device.

    Returns:
        (rows, cols) tensor in the dtype of ``v``.

    Examples:
        >>> q = householder_forward(torch.randn(512, 512, device="cuda"), 256, 512, 1e-12)  # doctest: +SKIP
    """
    block_d, block_c, warps = _plan(v, rows, cols, 8192, "householder_forward", block_c)
    v = v.contiguous()
    out = torch.empty((rows, cols), device=v.device, dtype=v.dtype)
    launch(_householder_fwd_kernel)[(triton.cdiv(cols, block_c),)](
        v, out, v.shape[0], v.shape[1], rows, cols, float(eps), IS_FP64=v.dtype == torch.float64,
        BLOCK_D=block_d, BLOCK_C=block_c, num_warps=warps)
    return out


def householder_backward(grad: torch.Tensor, v: torch.Tensor, rows: int, cols: int, eps: float,
                         block_c: int | None = None) -> torch.Tensor:
    """Gradient of :func:`householder_forward` wrt ``v``, recomputing the iterates.

    Args:
        grad: (rows, cols) gradient of the output (any strides; made contiguous).
        v: (r, d) reflection vectors of the forward.
        rows: rows of the forward result.
        cols: columns of the forward result.
        eps: floor of ``||v_i||^2`` used in the forward.
        block_c: columns per program (a power of two), or None to choose by size and device.

    Returns:
        (r, d) gradient in the dtype of ``v``.

    Examples:
        >>> v = torch.randn(16, 16, device="cuda")  # doctest: +SKIP
        >>> dv = householder_backward(torch.ones(16, 8, device="cuda"), v, 16, 8, 1e-12)  # doctest: +SKIP
    """
    block_d, block_c, warps = _plan(v, rows, cols, 4096, "householder_backward", block_c)
    if grad.shape != (rows, cols):
        raise ValueError(f"householder_backward: grad must be ({rows}, {cols}), got {tuple(grad.shape)}")
    v, grad = v.contiguous(), grad.contiguous()
    is_fp64 = v.dtype == torch.float64
    # Column blocks add their partial gradients atomically: start from zeros.
    dv = torch.zeros(v.shape, device=v.device, dtype=torch.float64 if is_fp64 else torch.float32)
    launch(_householder_bwd_kernel)[(triton.cdiv(cols, block_c),)](
        v, grad, dv, v.shape[0], v.shape[1], rows, cols, float(eps), IS_FP64=is_fp64,
        BLOCK_D=block_d, BLOCK_C=block_c, num_warps=warps)
    return dv.to(v.dtype)
