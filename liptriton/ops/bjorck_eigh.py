"""Björck orthonormalization through one eigendecomposition: the CPU training path.

Every Björck step ``X <- q(X X^T) X`` acts on each singular value alone (``s <- s q(s^2)``),
so ``n`` steps from ``Y = X / sigma_max(X)`` give ``Y_n = h(Y Y^T) Y`` with the scalar function
``h(y) = prod_k q(y_k)``, ``y_0 = y``, ``y_{k+1} = y_k q(y_k)^2``. With the eigendecomposition
``X X^T = U diag(lambda) U^T`` (float64, on the smaller side) the result is
``U diag(h(lambda / lambda_1) / sqrt(lambda_1)) U^T X``: the same polynomial, hence the same
bound (every singular value ``f^n(s) <= 1``), from one Gram product, one ``eigh`` and one
application, the floor of an exact Björck weight (perf/NOTES.md, "Count first"). The division by
``sigma_max`` is part of the op: ``lambda_1`` is exact, so no warm power iteration and no
guaranteed bound beside it.

The backward is the Fréchet derivative of the matrix function: ``U (K o (U^T S U)) U^T`` with
``K_ij`` the divided differences of ``h`` at ``(lambda_i, lambda_j)``, computed by the chain
and product rules through the steps (no ``1 / (lambda_i - lambda_j)``: exact for equal and
near-equal eigenvalues, which an orthogonal weight has), plus the term of ``lambda_1``.

The products run in float64: ``h`` reaches ``q(0)^n`` (130 for 12 order-1 steps) on the directions
of small singular values, and a float32 application would let rounding leak into them (the
gradient's products run in the weight's precision). CPU only (``eigh`` synchronizes on CUDA,
which keeps the Gram-space steps): :func:`eigh_pays` decides; no Triton kernel. Compiled graphs
call it as two opaque ops (``liptriton::bjorck_eigh`` and its backward). Once differentiable: a
second derivative with respect to the weight (a Hessian in parameter space) raises; the iteration
(:func:`~liptriton.ops.bjorck_gram`, :func:`~liptriton.ops.bjorck`) has one.

Measured (one thread, 12 order-1 steps, forward + backward, against the power iteration + guard +
Gram-space or direct steps it replaces): 16 x 9 2.2 -> 0.8 ms, 32 x 288 2.5 -> 1.2, 64 x 2048 8.6
-> 3.9, 128 x 1152 16.5 -> 11.0, 256 x 1568 78 -> 40-52, 512 x 4608 720-830 -> 260-310; square
64 x 64 3.5 -> 2.0 (squarer and larger weights keep the iteration).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from liptriton.ops._dispatch import transforms_active
from liptriton.ops.bjorck import _check, bjorck_coefficients

__all__ = ["bjorck_eigh", "eigh_pays"]

# Smaller side up to which a CPU training forward takes this path (see eigh_pays): it wins at every
# size measured (up to 512 x 4608); the backward holds a few n_iters x S x S float64 stacks at once
# (25 MB each at S = 512, 12 steps).
EIGH_SIDE = 512
_STACK_SIDE = 64  # up to this side the backward's divided differences take every step at once


def eigh_pays(shape: tuple[int, ...], device: torch.device) -> bool:
    """True when :func:`bjorck_eigh` is the cheaper training path for matrices of ``shape``
    (..., m, n) on ``device``: on a CPU, outside torch.func transforms, smaller side from 2 to 512,
    and either at most 64
    (the iteration is op-bound there) or the larger side at least twice the smaller (Gram space's
    floor). A squarer weight gains nothing: its direct steps cost about the ``eigh`` and the
    divided differences (128 x 128: 9-13 ms against 6-9).

    Examples:
        >>> cpu = torch.device("cpu")
        >>> eigh_pays((64, 2048), cpu), eigh_pays((32, 32), cpu), eigh_pays((256, 256), cpu)
        (True, True, False)
    """
    small, large = sorted(shape[-2:])
    return (device.type == "cpu" and 2 <= small <= EIGH_SIDE and (small <= 64 or large >= 2 * small)
            and not transforms_active())  # torch.func transforms keep the iteration (plain autograd)


def _poly(coeffs: tuple[float, ...], y: Tensor) -> Tensor:
    out = y * coeffs[-1] + coeffs[-2]  # (at least two coefficients: order 1 is c_0 + c_1 y)
    for c in reversed(coeffs[:-2]):
        out = out * y + c
    return out


def _trajectory(y: Tensor, steps: int, coeffs: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """The scalar iteration on a batch of values ``y`` in [0, 1]: ``(y_k, q(y_k), h_k)`` for
    k = 0 .. steps - 1, stacked on a new first dimension, and ``h = h_steps`` is
    ``hs[-1] * qs[-1]``."""
    if len(coeffs) == 2:  # order 1 (the default): y_k = y_0 h_k^2, so q_k = c_0 + c_1 y_0 h_k^2
        c0, a = torch.full_like(y, coeffs[0]), y * coeffs[1]  # (three ops a step instead of five)
        hs, qs = [torch.ones_like(y)], []
        for k in range(steps):
            qs.append(torch.addcmul(c0, a, hs[-1].square()) if k else c0 + a)
            if k + 1 < steps:
                hs.append(hs[-1] * qs[-1])
        hs = torch.stack(hs)
        return y * hs.square(), torch.stack(qs), hs
    ys, qs, hs = [], [], []
    h = torch.ones_like(y)
    for _ in range(steps):
        q = _poly(coeffs, y)
        ys.append(y)
        qs.append(q)
        hs.append(h)
        h = h * q
        y = y * q.square()
    return torch.stack(ys), torch.stack(qs), torch.stack(hs)


def _step_factors(y: Tensor, q: Tensor, coeffs: tuple[float, ...]) -> tuple[Tensor | float, Tensor]:
    """``([q](a, b), [psi](a, b))`` at the pairs of ``y`` (any leading dimensions: one step or the
    stack of them), ``q = q(y)``: ``[psi](a, b) = q(b)^2 + a (q(a) + q(b)) [q](a, b)`` for
    ``psi(y) = y q(y)^2``; ``[q]`` by Horner (``[c + y r](a, b) = r(b) + a [r](a, b)``), the constant
    ``c_1`` for order 1."""
    a, qa, qb = y[..., :, None], q[..., :, None], q[..., None, :]
    if len(coeffs) == 2:
        return coeffs[1], torch.addcmul(qb.square(), a, qa + qb, value=coeffs[1])
    dq, tail = torch.zeros_like(a * qb), torch.full_like(y, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        dq = torch.addcmul(tail[..., None, :], a, dq)
        tail = tail * y + c
    return dq, torch.addcmul(qb.square(), a * (qa + qb), dq)


def _divided_differences(ys: Tensor, qs: Tensor, hs: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    """``[h](y_i, y_j)`` for all pairs (batch, S, S) from the trajectory; the diagonal is
    ``h'(y_i)``. No ``1 / (y_i - y_j)``: by the chain and product rules through the steps,
    ``[y_{k+1}] = [psi]_k [y_k]`` and ``[h_{k+1}] = [h_k] q(y_k(b)) + h_k(a) [q]_k [y_k]``, so
    ``[h_n] = sum_k h_k(a) [q]_k [y_k] prod_{j > k} q(y_j(b))`` (:func:`_step_factors`). Up to
    side 64 every step at once (stacked: few ops); above, one step at a time in place (a few
    S x S matrices live instead of stacks of ``n_iters``: network (a) of perf/, whose 256 x 1568
    weight takes it, had its eager step's peak tensor memory at 53.4 MB stacked, 33.0 MB so; 42.3
    MB before this path, 34.6 MB for the unconstrained network)."""
    if ys.shape[-1] > _STACK_SIDE:
        dy = torch.ones(ys.shape[1:] + ys.shape[-1:], dtype=ys.dtype, device=ys.device)
        dh = torch.zeros_like(dy)
        for y, q, h in zip(ys, qs, hs):
            dq, t = _step_factors(y, q, coeffs)
            dh.mul_(q[..., None, :]).addcmul_(h[..., :, None] * dq, dy)
            dy.mul_(t)
        return dh
    dq, t = _step_factors(ys, qs, coeffs)
    dy = torch.cumprod(torch.cat([torch.ones_like(t[:1]), t[:-1]]), 0)  # [y_k], k = 0 .. n - 1
    later = torch.cat([torch.ones_like(qs[:1]), qs.flip(0)[:-1]]).cumprod(0).flip(0)  # prod_{j > k} q_j
    return ((hs[..., :, None] * later[..., None, :]) * dq * dy).sum(0)


def _forward(x: Tensor, steps: int, coeffs: tuple[float, ...]) -> tuple[Tensor, ...]:
    """``(q, top, u, lambda_1, F, ys, qs, hs)`` for matrices ``x`` (B, S, n), S <= n: the iterate,
    the top eigenvector, and what the backward needs."""
    xd = x.double()
    lam, u = torch.linalg.eigh(torch.bmm(xd, xd.mT).nan_to_num(0.0, 0.0, 0.0))
    lam1 = lam[..., -1:].clamp_min(torch.finfo(torch.float64).tiny)
    ys, qs, hs = _trajectory(lam.clamp_min(0) / lam1, steps, coeffs)
    f = hs[-1] * qs[-1] / lam1.sqrt()
    big_f = torch.bmm(u * f[..., None, :], u.mT)  # (bmm, not matmul: batched 3-D operands, fewer ops)
    return torch.bmm(big_f, xd).to(x.dtype), u[..., -1].clone(), u, lam1, big_f, ys, qs, hs


def _backward(dq: Tensor, x: Tensor, u: Tensor, lam1: Tensor, big_f: Tensor, ys: Tensor, qs: Tensor,
              hs: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    # the gradient's products in the weight's precision (float32: a relative 1e-6 is far below
    # what the optimizer needs); the S x S algebra in float64
    m = torch.bmm(dq, x.mT).double()
    mt = torch.bmm(torch.bmm(u.mT, m + m.mT), u)
    dh = _divided_differences(ys, qs, hs, coeffs)
    scale = lam1[..., None] ** -1.5
    inner = mt * dh * scale
    # the term of lambda_1: d f_i / d lambda_1 = -lambda_1^(-3/2) (h'(y_i) y_i + h(y_i) / 2)
    h = hs[-1] * qs[-1]
    c = -(mt.diagonal(dim1=-2, dim2=-1) * (dh.diagonal(dim1=-2, dim2=-1) * ys[0] + 0.5 * h)).sum(-1)
    inner[..., -1, -1] += c * scale[..., 0, 0]
    return torch.baddbmm(torch.bmm(big_f.to(x.dtype), dq), torch.bmm(torch.bmm(u, inner), u.mT).to(x.dtype), x)


class _BjorckEigh(torch.autograd.Function):
    """The eager path. Once differentiable: the backward's saved factors are constants to autograd,
    so a second derivative would miss their dependence on the weight; it raises instead."""

    @staticmethod
    def forward(ctx, x: Tensor, steps: int, coeffs: tuple[float, ...]) -> tuple[Tensor, Tensor]:
        q, top, *saved = _forward(x, steps, coeffs)
        ctx.save_for_backward(x, *saved)
        ctx.coeffs = coeffs
        ctx.mark_non_differentiable(top)
        return q, top

    @staticmethod
    @once_differentiable
    def backward(ctx, dq: Tensor, _dtop: Tensor) -> tuple[Tensor, None, None]:
        return _backward(dq, *ctx.saved_tensors, ctx.coeffs), None, None


# Compiled graphs on a CPU call the same functions as two opaque ops (Inductor would otherwise trace
# the steps and the eigendecomposition: 100 s to compile one layer, where these take seconds).
@torch.library.custom_op("liptriton::bjorck_eigh", mutates_args=(), device_types="cpu")
def _op(x: Tensor, steps: int, coeffs: list[float]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                             Tensor, Tensor]:
    q, top, u, lam1, big_f, ys, qs, hs = _forward(x, steps, tuple(coeffs))
    # contiguous, as the fake outputs (matmul may return a transposed layout; eigh's vectors are column-major)
    return q.contiguous(), top, u.contiguous(), lam1.clone(), big_f.contiguous(), ys, qs, hs


@_op.register_fake
def _(x: Tensor, steps: int, coeffs: list[float]) -> tuple[Tensor, ...]:
    b, side = x.shape[0], x.shape[1]

    def f64(*shape: int) -> Tensor:
        return x.new_empty(shape, dtype=torch.float64)

    return (x.new_empty(x.shape), f64(b, side), f64(b, side, side), f64(b, 1), f64(b, side, side),
            f64(steps, b, side), f64(steps, b, side), f64(steps, b, side))


@torch.library.custom_op("liptriton::bjorck_eigh_backward", mutates_args=(), device_types="cpu")
def _op_backward(dq: Tensor, x: Tensor, u: Tensor, lam1: Tensor, big_f: Tensor, ys: Tensor, qs: Tensor,
                 hs: Tensor, coeffs: list[float]) -> Tensor:
    # the gradient in the input's layout (a tall weight arrives transposed), as the fake one
    return torch.empty_like(x).copy_(_backward(dq, x, u, lam1, big_f, ys, qs, hs, tuple(coeffs)))


@_op_backward.register_fake
def _(dq: Tensor, x: Tensor, *_: object) -> Tensor:
    return torch.empty_like(x)


def _setup(ctx, inputs: tuple, output: tuple) -> None:
    ctx.save_for_backward(inputs[0], *output[2:])
    ctx.coeffs = inputs[2]


def _op_grad(ctx, dq: Tensor, *_: Tensor) -> tuple[Tensor, None, None]:
    return torch.ops.liptriton.bjorck_eigh_backward(dq, *ctx.saved_tensors, ctx.coeffs), None, None


_op.register_autograd(_op_grad, setup_context=_setup)


def bjorck_eigh(w: Tensor, n_iters: int = 15, order: int = 1, beta: float = 0.5) -> tuple[Tensor, Tensor]:
    """``n_iters`` Björck steps from ``w / sigma_max(w)``, through one float64 eigendecomposition.

    The same polynomial as :func:`~liptriton.ops.bjorck` on ``w / ||w||_2`` (float64 reference:
    relative 1e-12), differentiable in ``w`` including the division by its spectral norm.

    Args:
        w: matrices (..., m, n), any scale (the op divides by the exact ``sigma_max``).
        n_iters: Björck steps (>= 1).
        order: polynomial order, 1 to 4.
        beta: the order-1 step size, in (0, 0.5].

    Returns:
        ``(q, top)``: the iterate (shape and dtype of ``w``) and the unit top singular vector of
        ``w`` on its smaller side (left for a wide ``w``, right for a tall one; float64, no
        gradient), for a power-iteration state.

    Examples:
        >>> from liptriton.ops import bjorck_reference
        >>> w = torch.randn(6, 20, dtype=torch.float64)
        >>> q, _ = bjorck_eigh(w, 10)
        >>> torch.allclose(q, bjorck_reference(w / torch.linalg.matrix_norm(w, 2), 10))
        True
    """
    _check(w, n_iters)
    coeffs = bjorck_coefficients(order, beta)
    wide = w.shape[-2] <= w.shape[-1]
    x = w if wide else w.mT
    shape = x.shape
    x3 = x.reshape(-1, *shape[-2:])
    if torch.compiler.is_compiling():
        q, top = torch.ops.liptriton.bjorck_eigh(x3, n_iters, list(coeffs))[:2]
    else:
        q, top = _BjorckEigh.apply(x3, n_iters, coeffs)
    q = q.reshape(shape)
    return (q if wide else q.mT), top.reshape(*shape[:-2], shape[-2])
