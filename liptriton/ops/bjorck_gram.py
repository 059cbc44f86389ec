"""Björck orthonormalization in Gram space: for a rectangular weight, every step is a product of
small matrices.

For a wide ``X_0`` (m x n, m <= n) every Björck iterate is ``X_k = P_k X_0`` with an m x m
``P_k``: ``X_{k+1} = q(X_k X_k^T) X_k`` (``q(g) = sum_i c_i g^i``) gives
``P_{k+1} = q(G_k) P_k`` with ``G_k = P_k G_0 P_k^T`` and ``G_0 = X_0 X_0^T``. So one m x m Gram
product of the weight, up to ``restart`` steps on m x m matrices, and one application ``P X_0``
per chunk: ``4 m^2 n`` flops per chunk plus ``O(m^3)`` per step, instead of ``4 m^2 n`` per step;
autograd saves m x m matrices and the chunks' iterates, and its backward costs two more products
of the weight's size per chunk. Measured (CPU, float32, forward + backward): 256 x 1568, 5 steps,
3.0x faster than the direct iteration, 15 steps 4.1x; 64 x 576 2.3x; 32 x 288 1.4x; square 128
x 128 0.93x (no gain: it is not used there). Same polynomial,
so the same bound: every singular value is ``f^k(s) <= 1``. Plain matmuls (cuBLAS / oneDNN on
small matrices) on the torch path; on CUDA the Triton path (kernels/bjorck_gram.py: tiled
products for the Gram and the application, the S x S steps of a chunk in one program per matrix
for S <= 64) with a recomputing backward (only ``w`` is saved). Used by :class:`~liptriton.parametrizations.Bjorck` where the
weight is rectangular enough to gain (see :func:`gram_pays`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._dispatch import HAS_TRITON, float32_compute, kernel_runnable, use_triton
from liptriton.ops._register import register_triton_op
from liptriton.ops.bjorck import _check, bjorck_coefficients

__all__ = ["bjorck_gram", "bjorck_gram_reference", "bjorck_gram_vjp_reference", "gram_pays"]


def gram_pays(shape: tuple[int, ...]) -> bool:
    """True when Gram space is cheaper for matrices of ``shape`` (..., m, n): the larger side at
    least twice the smaller, and the smaller side at least 16 (below that the step is launch-bound)."""
    small, large = sorted(shape[-2:])
    return small >= 16 and large >= 2 * small


def bjorck_gram(w: Tensor, n_iters: int = 15, order: int = 1, beta: float = 0.5, restart: int = 5) -> Tensor:
    """Björck orthonormalization of ``w`` computed in Gram space (same result as ``bjorck``).

    Dispatches to the Triton path on CUDA (and on CPU under the interpreter switch), to
    :func:`bjorck_gram_reference` (differentiated by autograd) elsewhere.

    Args:
        w: matrices of shape (..., m, n) with ``||w||_2 <= 1`` (any orientation).
        n_iters: Björck steps (>= 1).
        order: polynomial order, 1 to 4.
        beta: the order-1 step size, in (0, 0.5].
        restart: steps per Gram chunk; the iterate is then formed and a new Gram taken. ``P``
            grows by up to 1.5 per step in the directions of small singular values (order 1),
            and its float32 rounding with it: measured on 64 x 512 weights of condition 1e3 to
            1e7, 15 steps in one chunk left the largest singular value at 1 + 1.1e-4, chunks of
            5 at 1 + 2e-6 (the direct iteration: 1 + 2e-7).

    Returns:
        The iterate after ``n_iters`` steps, shape and dtype of ``w``; differentiable (autograd).

    Examples:
        >>> from liptriton.ops import bjorck_reference
        >>> w = torch.randn(8, 40, dtype=torch.float64)
        >>> w = w / torch.linalg.matrix_norm(w, 2)
        >>> torch.allclose(bjorck_gram(w, 10), bjorck_reference(w, 10))
        True
    """
    _check_all(w, n_iters, restart)
    if use_triton(w):
        return torch.ops.liptriton.bjorck_gram(w, n_iters, order, float(beta), restart)
    return bjorck_gram_reference(w, n_iters, order, beta, restart)


def _check_all(w: Tensor, n_iters: int, restart: int) -> None:
    _check(w, n_iters)
    if not isinstance(restart, int) or restart < 1:
        raise ValueError(f"bjorck_gram: restart must be an integer >= 1, got {restart!r}")


def _steps(g0: Tensor, steps: int, coeffs: tuple[float, ...], eye: Tensor) -> Tensor:
    """P after ``steps`` Gram-space steps from G0 (P_0 = I, P <- q(sym(P G0 P^T)) P)."""
    if len(coeffs) == 2:  # order 1: P <- c0 P + c1 sym(G) P, one fused product per step
        return _steps_order1(g0, steps, coeffs, eye)
    p = eye.expand_as(g0)
    for _ in range(steps):
        g = p @ g0 @ p.mT
        g = 0.5 * (g + g.mT)  # symmetric up to rounding: keep it so
        p = _poly(g, coeffs, 0, eye) @ p
    return p


def _steps_order1(g0: Tensor, steps: int, coeffs: tuple[float, ...], eye: Tensor) -> Tensor:
    """:func:`_steps` for order 1 in 4 ops per step (2 products, the symmetrization, one
    ``baddbmm``), instead of 9: on small weights the eager step is launch-bound."""
    c0, c1 = coeffs
    g3 = g0.reshape(-1, *g0.shape[-2:])
    p = torch.add(c0 * eye, g3 + g3.mT, alpha=0.5 * c1)  # the first step, from P = I
    for _ in range(steps - 1):  # bmm, not @: matmul's broadcasting adds expand/view autograd nodes
        g = torch.bmm(torch.bmm(p, g3), p.mT)
        p = torch.baddbmm(p, g + g.mT, p, beta=c0, alpha=0.5 * c1)
    return p.reshape(g0.shape)


def _poly(g: Tensor, coeffs: tuple[float, ...], first: int, eye: Tensor) -> Tensor:
    """Q_first = sum_{i >= first} c_i g^(i - first) (Horner)."""
    q = coeffs[-1] * eye.expand_as(g)
    for c in reversed(coeffs[first:-1]):
        q = g @ q + c * eye
    return q


def bjorck_gram_reference(w: Tensor, n_iters: int = 15, order: int = 1, beta: float = 0.5,
                          restart: int = 5) -> Tensor:
    """Pure-torch Gram-space Björck (the definition of correct for its Triton path; autograd).

    Args:
        w: matrices (..., m, n) with ``||w||_2 <= 1``.
        n_iters: Björck steps (>= 1).
        order: polynomial order, 1 to 4.
        beta: the order-1 step size.
        restart: steps per Gram chunk.

    Returns:
        The iterate after ``n_iters`` steps, shape and dtype of ``w`` (float32 compute for half).

    Examples:
        >>> w = torch.randn(4, 12, dtype=torch.float64)
        >>> q = bjorck_gram_reference(w / torch.linalg.matrix_norm(w, 2), 30)
        >>> torch.allclose(q @ q.mT, torch.eye(4, dtype=torch.float64), atol=1e-6)
        True
    """
    _check_all(w, n_iters, restart)
    coeffs = bjorck_coefficients(order, beta)
    wide = w.shape[-2] <= w.shape[-1]
    x = float32_compute(w if wide else w.mT)
    eye = torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
    x3 = x.reshape(-1, *x.shape[-2:])  # bmm: no broadcasting nodes in the autograd graph
    for done in range(0, n_iters, restart):  # restart from the iterate
        x3 = torch.bmm(_steps(torch.bmm(x3, x3.mT), min(restart, n_iters - done), coeffs, eye), x3)
    x = x3.reshape(x.shape)
    return (x if wide else x.mT).to(w.dtype)


def bjorck_gram_vjp_reference(w: Tensor, grad: Tensor, n_iters: int = 15, order: int = 1, beta: float = 0.5,
                              restart: int = 5) -> Tensor:
    """Pure-torch gradient of :func:`bjorck_gram_reference` w.r.t. ``w``, recomputing the iterates.

    The formula the kernels implement (kernels/bjorck_gram.py): per chunk ``Y = P X``,
    ``dP = dY X^T``, ``dG0`` by walking the S x S steps back, ``dX = P^T dY + (dG0 + dG0^T) X``.

    Args:
        w: the forward's input (..., m, n).
        grad: gradient w.r.t. the forward's output, same shape.
        n_iters, order, beta, restart: as in the forward.

    Returns:
        The gradient w.r.t. ``w``, shape and dtype of ``w``.

    Examples:
        >>> w = torch.randn(3, 7, dtype=torch.float64) / 5
        >>> g = torch.randn(3, 7, dtype=torch.float64)
        >>> wr = w.clone().requires_grad_()
        >>> (bjorck_gram_reference(wr, 4) * g).sum().backward()
        >>> torch.allclose(bjorck_gram_vjp_reference(w, g, 4), wr.grad)
        True
    """
    _check_all(w, n_iters, restart)
    coeffs = bjorck_coefficients(order, beta)
    wide = w.shape[-2] <= w.shape[-1]
    x = float32_compute(w if wide else w.mT)
    dy = grad.to(x.dtype) if wide else grad.to(x.dtype).mT
    eye = torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
    saved = []
    for done in range(0, n_iters, restart):
        steps, g0 = min(restart, n_iters - done), x @ x.mT
        ps = [eye.expand_as(g0)]
        for _ in range(steps):
            g = ps[-1] @ g0 @ ps[-1].mT
            ps.append(_poly(0.5 * (g + g.mT), coeffs, 0, eye) @ ps[-1])
        saved.append((x, g0, ps))
        x = ps[-1] @ x
    for x, g0, ps in reversed(saved):
        dp, dg0 = dy @ x.mT, torch.zeros_like(g0)
        dy = ps[-1].mT @ dy
        for p in reversed(ps[:-1]):
            g = p @ g0 @ p.mT
            g = 0.5 * (g + g.mT)
            dk = dp @ p.mT  # dq
            dp = _poly(g, coeffs, 0, eye).mT @ dp
            dg = dk @ _poly(g, coeffs, 1, eye).mT
            for k in range(1, len(coeffs) - 1):
                dk = g @ dk
                dg = dg + dk @ _poly(g, coeffs, k + 1, eye).mT
            dgs_p = 0.5 * (dg + dg.mT) @ p
            dp = dp + dgs_p @ (g0 + g0.mT)
            dg0 = dg0 + p.mT @ dgs_p
        dy = dy + (dg0 + dg0.mT) @ x
    return (dy if wide else dy.mT).to(w.dtype)


if HAS_TRITON:
    from liptriton.kernels.bjorck_gram import bjorck_gram_backward as _kernel_backward
    from liptriton.kernels.bjorck_gram import bjorck_gram_forward as _kernel_forward

    def _takes_kernel(w: Tensor, *args) -> bool:
        return kernel_runnable(w) and w.dtype != torch.float64 and w.numel() > 0

    def _bjorck_gram_forward(w: Tensor, n_iters: int, order: int, beta: float, restart: int) -> Tensor:
        """Triton path of :func:`bjorck_gram` (the backward recomputes)."""
        m, n = w.shape[-2:]
        y = _kernel_forward(w.reshape(-1, m, n), n_iters, bjorck_coefficients(order, beta), restart)
        return y.reshape(w.shape).to(w.dtype)

    def _bjorck_gram_backward(grad: Tensor, w: Tensor, n_iters: int, order: int, beta: float,
                              restart: int) -> Tensor:
        """Gradient w.r.t. w: recomputes the chunks from w (only w is saved)."""
        m, n = w.shape[-2:]
        dx = _kernel_backward(w.reshape(-1, m, n), grad.reshape(-1, m, n), n_iters,
                              bjorck_coefficients(order, beta), restart)
        return dx.reshape(w.shape).to(w.dtype)

    def _bjorck_gram_backward_reference(grad: Tensor, w: Tensor, n_iters: int, order: int, beta: float,
                                        restart: int) -> Tensor:
        return bjorck_gram_vjp_reference(w, grad, n_iters, order, beta, restart)

    register_triton_op("bjorck_gram", reference=bjorck_gram_reference, forward=_bjorck_gram_forward,
                       reference_backward=_bjorck_gram_backward_reference, backward=_bjorck_gram_backward,
                       takes_kernel=_takes_kernel)
