"""Householder product: an exactly orthogonal matrix from reflection vectors.

``Q = H_1 H_2 ... H_r`` with ``H_i = I - 2 v_i v_i^T / ||v_i||^2`` (d x d, d = max(m, n));
the weight is ``Q[:m, :n]``: orthonormal rows when m <= n, orthonormal columns when m >= n.
No iteration: the result is orthogonal up to rounding for any vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._dispatch import HAS_TRITON, float32_compute, kernel_runnable, use_triton
from liptriton.ops._register import register_triton_op

__all__ = ["householder_product", "householder_product_reference"]

_EPS = 1e-12


def _check(v: Tensor, rows: int, cols: int) -> None:
    if not v.is_floating_point():
        raise TypeError(f"householder_product: v must be a floating-point tensor, got dtype {v.dtype}")
    if v.dim() != 2:
        raise ValueError(f"householder_product: v must have shape (r, d), got {tuple(v.shape)}")
    if rows < 1 or cols < 1 or v.shape[1] != max(rows, cols):
        raise ValueError(
            f"householder_product: v must have d = max(rows, cols) = {max(rows, cols)} columns, "
            f"got v of shape {tuple(v.shape)} for a {rows} x {cols} weight"
        )


def householder_product_reference(v: Tensor, rows: int, cols: int, eps: float = _EPS) -> Tensor:
    """Pure-torch ``(H_1 ... H_r)[:rows, :cols]``, applied right to left to the identity.

    Args:
        v: reflection vectors, shape (r, d) with d = max(rows, cols); a zero row is the identity.
        rows: m, rows of the result.
        cols: n, columns of the result.
        eps: floor of ``||v_i||^2``.

    Returns:
        A (rows, cols) matrix with orthonormal rows (rows <= cols) or columns.

    Examples:
        >>> q = householder_product_reference(torch.randn(3, 3, dtype=torch.float64), 3, 3)
        >>> torch.allclose(q @ q.T, torch.eye(3, dtype=torch.float64))
        True
    """
    _check(v, rows, cols)
    x = float32_compute(v)
    d = x.shape[1]
    out = torch.eye(d, cols, dtype=x.dtype, device=x.device)
    scale = 2.0 / (x * x).sum(dim=1).clamp_min(eps)
    for i in range(x.shape[0] - 1, -1, -1):
        vi = x[i]
        out = out - (scale[i] * vi).unsqueeze(1) * (vi @ out).unsqueeze(0)
    return out[:rows].to(v.dtype)


def householder_product(v: Tensor, rows: int, cols: int, eps: float = _EPS) -> Tensor:
    """Orthogonal ``rows x cols`` matrix from Householder vectors (differentiable).

    On CUDA one Triton program applies all reflections to a column block of the identity
    (forward) and replays them in reverse (backward); elsewhere the torch reference.

    Args:
        v: reflection vectors, shape (r, d), d = max(rows, cols).
        rows: number of rows m of the result.
        cols: number of columns n of the result.
        eps: floor of ``||v_i||^2``.

    Returns:
        Tensor (rows, cols): orthonormal rows if rows <= cols, orthonormal columns otherwise.

    Examples:
        >>> import liptriton.ops as ops
        >>> q = ops.householder_product(torch.randn(4, 6), 4, 6)
        >>> torch.allclose(q @ q.T, torch.eye(4), atol=1e-5)
        True
    """
    _check(v, rows, cols)
    if use_triton(v):
        return torch.ops.liptriton.householder_product(v, int(rows), int(cols), float(eps))
    return householder_product_reference(v, rows, cols, eps)


def _householder_backward_reference(grad: Tensor, v: Tensor, rows: int, cols: int, eps: float) -> Tensor:
    """Torch formula of the backward (as the kernel: recompute, then undo one reflection at a time).

    With ``X_k = H_k X_{k+1}``, ``G_k = dL/dX_k``, ``w = X_{k+1}^T v_k``, ``z = G_k^T v_k``:
    ``dL/dv_k = -s_k (G_k w + X_{k+1} z) + s_k^2 (w . z) v_k`` and ``G_{k+1} = H_k G_k``.
    """
    x = float32_compute(v)
    d = x.shape[1]
    sq = (x * x).sum(dim=1)
    scale = 2.0 / sq.clamp_min(eps)
    unclamped = (sq >= eps).to(x.dtype)
    out = torch.eye(d, cols, dtype=x.dtype, device=x.device)
    for i in range(x.shape[0] - 1, -1, -1):
        out = out - (scale[i] * x[i]).unsqueeze(1) * (x[i] @ out).unsqueeze(0)
    g = torch.zeros_like(out)
    g[:rows] = float32_compute(grad)
    dv = []
    for k in range(x.shape[0]):
        vk, sk = x[k], scale[k]
        out = out - (sk * vk).unsqueeze(1) * (vk @ out).unsqueeze(0)
        w, z = vk @ out, vk @ g
        dv.append(-sk * (g @ w + out @ z) + unclamped[k] * sk * sk * (w @ z) * vk)
        g = g - (sk * vk).unsqueeze(1) * z.unsqueeze(0)
    return torch.stack(dv).to(v.dtype) if dv else torch.zeros_like(v)


if HAS_TRITON:
    from liptriton.kernels.householder import HOUSEHOLDER_MAX_DIM, householder_backward, householder_forward

    def _takes_kernel(v: Tensor, *args) -> bool:
        return kernel_runnable(v) and v.shape[1] <= HOUSEHOLDER_MAX_DIM and v.shape[0] > 0

    def _householder_forward(v: Tensor, rows: int, cols: int, eps: float) -> Tensor:
        """Triton path of :func:`householder_product` (torch reference beyond the kernel's d)."""
        _check(v, rows, cols)
        return householder_forward(v, rows, cols, eps)

    def _householder_backward(grad: Tensor, v: Tensor, rows: int, cols: int, eps: float) -> Tensor:
        return householder_backward(grad, v, rows, cols, eps)

    register_triton_op("householder_product", reference=householder_product_reference, forward=_householder_forward,
                       reference_backward=_householder_backward_reference, backward=_householder_backward,
                       takes_kernel=_takes_kernel)
