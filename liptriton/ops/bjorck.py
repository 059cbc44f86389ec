"""Björck–Bowie orthonormalization: the public op, its torch reference and its dispatch.

On singular values, one order-1 step is ``s <- (1 + b) s - b s^3``; for ``b = 0.5`` it maps
[0, 1] into [0, 1] monotonically and converges to 1, so with ``||W||_2 <= 1`` on entry
every iterate keeps the bound. Higher orders use the LNets coefficients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._dispatch import HAS_TRITON, float32_compute, kernel_runnable, use_triton
from liptriton.ops._register import register_triton_op

__all__ = ["bjorck", "bjorck_reference", "bjorck_coefficients", "bjorck_vjp_reference"]

# p(X) = sum_i c_i X (X^T X)^i, Taylor expansion of X (X^T X)^(-1/2) (Anil et al., 2019).
_HIGHER_ORDERS: dict[int, tuple[float, ...]] = {
    2: (15 / 8, -5 / 4, 3 / 8),
    3: (35 / 16, -35 / 16, 21 / 16, -5 / 16),
    4: (315 / 128, -105 / 32, 189 / 64, -45 / 32, 35 / 128),
}


def bjorck_coefficients(order: int = 1, beta: float = 0.5) -> tuple[float, ...]:
    """Return the coefficients ``c_i`` of one Björck step ``X <- sum_i c_i X (X^T X)^i``.

    Args:
        order: 1 to 4. Order 1 is ``(1 + beta, -beta)``; orders 2-4 use fixed coefficients.
        beta: the order-1 step size, in (0, 0.5].

    Returns:
        The coefficients, lowest power first.

    Examples:
        >>> bjorck_coefficients(1)
        (1.5, -0.5)
    """
    if order == 1:
        if not 0.0 < beta <= 0.5:
            raise ValueError(f"bjorck: beta must be in (0, 0.5] (keeps the bound), got {beta}")
        return (1.0 + beta, -beta)
    if order not in _HIGHER_ORDERS:
        raise ValueError(f"bjorck: order must be 1, 2, 3 or 4, got {order}")
    return _HIGHER_ORDERS[order]


def _check(w: Tensor, n_iters: int) -> None:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise TypeError(f"bjorck: w must be a floating-point tensor, got {type(w).__name__}"
                        f"{'' if not isinstance(w, Tensor) else ' of dtype ' + str(w.dtype)}")
    if w.dim() < 2:
        raise ValueError(f"bjorck: w must have at least 2 dimensions (..., m, n), got shape {tuple(w.shape)}")
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"bjorck: n_iters must be an integer >= 1, got {n_iters!r}")


def bjorck_reference(w: Tensor, n_iters: int = 15, order: int = 1, beta: float = 0.5) -> Tensor:
    """Pure-torch Björck iteration (the definition of correct for the Triton kernels).

    The Gram matrix is formed on the smaller side: ``(X X^T) X`` for a wide ``X`` (m < n),
    ``X (X^T X)`` otherwise. Computed in float32 for half-precision inputs.

    Args:
        w: weight of shape (..., m, n) with spectral norm <= 1.
        n_iters: number of steps (a Python int: fixed, not data-dependent).
        order: order of the polynomial (1 to 4).
        beta: order-1 step size.

    Returns:
        The orthonormalized weight, same shape and dtype as ``w``.

    Examples:
        >>> w = torch.randn(8, 5, dtype=torch.float64)
        >>> q = bjorck_reference(w / torch.linalg.matrix_norm(w, 2), 30)
        >>> torch.allclose(q.mT @ q, torch.eye(5, dtype=torch.float64), atol=1e-6)
        True
    """
    _check(w, n_iters)
    coeffs = bjorck_coefficients(order, beta)
    x = float32_compute(w)
    wide = x.shape[-2] < x.shape[-1]
    if len(coeffs) == 2:  # order 1: X <- c0 X + c1 G X, one fused product per step (launch-bound)
        x3 = x.reshape(-1, *x.shape[-2:])
        for _ in range(n_iters):
            x3 = (torch.baddbmm(x3, torch.bmm(x3, x3.mT), x3, beta=coeffs[0], alpha=coeffs[1]) if wide
                  else torch.baddbmm(x3, x3, torch.bmm(x3.mT, x3), beta=coeffs[0], alpha=coeffs[1]))
        return x3.reshape(x.shape).to(w.dtype)
    for _ in range(n_iters):
        g = x @ x.mT if wide else x.mT @ x
        # Horner on the Gram: y = c_0 X + G-side products, applied on the Gram's side.
        acc = x * coeffs[-1]
        for c in reversed(coeffs[:-1]):
            acc = (g @ acc if wide else acc @ g) + c * x
        x = acc
    return x.to(w.dtype)


def bjorck_vjp_reference(w: Tensor, grad: Tensor, n_iters: int = 15, order: int = 1,
                         beta: float = 0.5) -> Tensor:
    """Pure-torch gradient of :func:`bjorck_reference` w.r.t. ``w``, recomputing the iterates.

    The formula the kernels implement. In the wide view X (S x L, S <= L; the transpose of a
    tall or square weight) one step is ``Y = P X`` with ``P = p(G) = sum_i c_i G^i`` and
    ``G = X X^T``. With ``P_k = sum_{i >= k} c_i G^(i-k)`` (Horner: ``P_k = G P_{k+1} + c_k I``)
    and ``D_k = (G^T)^k dP``, its vector-Jacobian product is

        dP = dY X^T,   dG = sum_{k=0}^{order-1} D_k P_{k+1}^T,   dX = P^T dY + (dG + dG^T) X.

    Args:
        w: the input of the forward, shape (..., m, n).
        grad: gradient of the loss w.r.t. the forward's output, same shape.
        n_iters: number of steps of the forward.
        order: order of the polynomial (1 to 4).
        beta: order-1 step size.

    Returns:
        The gradient w.r.t. ``w``, same shape and dtype as ``w``.

    Examples:
        >>> w = torch.randn(3, 5, dtype=torch.float64) / 4
        >>> g = torch.randn(3, 5, dtype=torch.float64)
        >>> wr = w.clone().requires_grad_()
        >>> (bjorck_reference(wr, 3) * g).sum().backward()
        >>> torch.allclose(bjorck_vjp_reference(w, g, 3), wr.grad)
        True
    """
    _check(w, n_iters)
    coeffs = bjorck_coefficients(order, beta)
    x = float32_compute(w)
    dy = grad.to(x.dtype)
    if x.shape[-2] >= x.shape[-1]:  # work on the wide view
        x, dy = x.mT, dy.mT
    xs = [x]
    for _ in range(n_iters - 1):
        g = xs[-1] @ xs[-1].mT
        acc = xs[-1] * coeffs[-1]
        for c in reversed(coeffs[:-1]):
            acc = g @ acc + c * xs[-1]
        xs.append(acc)
    eye = torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
    for x in reversed(xs):
        g = x @ x.mT
        ps = [eye * coeffs[-1]]
        for c in reversed(coeffs[:-1]):
            ps.insert(0, g @ ps[0] + c * eye)
        dk = dy @ x.mT
        dg = dk @ ps[1].mT
        for k in range(1, len(coeffs) - 1):
            dk = g.mT @ dk
            dg = dg + dk @ ps[k + 1].mT
        dy = ps[0].mT @ dy + (dg + dg.mT) @ x
    if w.shape[-2] >= w.shape[-1]:
        dy = dy.mT
    return dy.to(w.dtype)


def bjorck(w: Tensor, n_iters: int = 15, order: int = 1, beta: float = 0.5) -> Tensor:
    """Orthonormalize ``w`` by ``n_iters`` Björck steps (differentiable).

    Dispatches to the Triton kernels on CUDA (and on CPU under the interpreter switch) and
    to :func:`bjorck_reference` elsewhere. On the Triton path a matrix whose smaller side is
    at most 64 runs all steps in one program (batched: one program per matrix), a larger one
    runs tiled matmuls with the update in the epilogue; float32 arithmetic ("ieee" dot products) in both; the
    backward recomputes the iterates from ``w`` (nothing else is saved). float64 inputs
    take the torch path. The input must satisfy ``||w||_2 <= 1`` (normalize it first, e.g.
    by power iteration); then every singular value of the result lies in [0, 1] whatever
    ``n_iters``, and converges to 1.

    Args:
        w: tensor of shape (m, n), or (..., m, n) for a batch of matrices.
        n_iters: number of steps (>= 1).
        order: polynomial order, 1 to 4.
        beta: order-1 step size in (0, 0.5].

    Returns:
        Tensor of the same shape and dtype, with singular values close to 1.

    Examples:
        >>> import liptriton.ops as ops
        >>> w = torch.randn(16, 32)
        >>> q = ops.bjorck(w / torch.linalg.matrix_norm(w, 2), n_iters=25)
        >>> bool(torch.linalg.svdvals(q).min() > 0.99)
        True
    """
    _check(w, n_iters)
    if use_triton(w):
        return torch.ops.liptriton.bjorck(w, n_iters, order, float(beta))
    if torch.is_grad_enabled() and w.requires_grad:
        return _BjorckRecompute.apply(w, n_iters, order, beta)
    return bjorck_reference(w, n_iters, order, beta)


class _BjorckRecompute(torch.autograd.Function):
    """The torch path with the kernels' memory behaviour: the forward saves only ``w`` (no
    iterates, no Gram matrices); the backward recomputes the iterates
    (:func:`bjorck_vjp_reference`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w: Tensor, n_iters: int, order: int, beta: float) -> Tensor:
        return bjorck_reference(w, n_iters, order, beta)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        w, n_iters, order, beta = inputs
        ctx.save_for_backward(w)
        ctx.args = (n_iters, order, beta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (w,) = ctx.saved_tensors
        return bjorck_vjp_reference(w, grad, *ctx.args), None, None, None


if HAS_TRITON:
    from liptriton.kernels.bjorck import bjorck_backward as _kernel_backward
    from liptriton.kernels.bjorck import bjorck_forward as _kernel_forward

    def _takes_kernel(w: Tensor, *args) -> bool:
        return kernel_runnable(w) and w.dtype != torch.float64 and w.numel() > 0

    def _bjorck_forward(w: Tensor, n_iters: int, order: int, beta: float) -> Tensor:
        """Triton path of :func:`bjorck` (fused or tiled by size)."""
        _check(w, n_iters)
        m, n = w.shape[-2:]
        y = _kernel_forward(w.reshape(-1, m, n), n_iters, bjorck_coefficients(order, beta))
        return y.reshape(w.shape).to(w.dtype)

    def _bjorck_backward(grad: Tensor, w: Tensor, n_iters: int, order: int, beta: float) -> Tensor:
        """Gradient w.r.t. w: recomputes the iterates from w (only w is saved)."""
        m, n = w.shape[-2:]
        dx = _kernel_backward(w.reshape(-1, m, n), grad.reshape(-1, m, n), n_iters,
                              bjorck_coefficients(order, beta))
        return dx.reshape(w.shape).to(w.dtype)

    def _bjorck_backward_reference(grad: Tensor, w: Tensor, n_iters: int, order: int, beta: float) -> Tensor:
        return bjorck_vjp_reference(w, grad, n_iters, order, beta)

    register_triton_op("bjorck", reference=bjorck_reference, forward=_bjorck_forward,
                       reference_backward=_bjorck_backward_reference, backward=_bjorck_backward,
                       takes_kernel=_takes_kernel)
