"""Grouped Björck: the weights of a whole network orthonormalized in one kernel launch.

The typical widths of Lipschitz networks (32 to 512) are far too small for one matrix to fill
a GPU; here every matrix that fits the fused kernel becomes one program of a single launch.
The matrices are packed end to end into one flat float32 buffer (``torch.cat``, so autograd
flows through packing and unpacking); a table of (offset, S, L, strides) per matrix tells
each program where its matrix lives and in which orientation to iterate.
"""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._dispatch import HAS_TRITON, kernel_runnable, use_triton
from liptriton.ops.bjorck import bjorck, bjorck_coefficients, bjorck_reference, bjorck_vjp_reference

__all__ = ["bjorck_grouped", "bjorck_grouped_reference"]


def _check(ws: list[Tensor], n_iters: int) -> None:
    if not isinstance(ws, (list, tuple)):
        raise TypeError(f"bjorck_grouped: ws must be a list of tensors, got {type(ws).__name__}")
    for i, w in enumerate(ws):
        if not isinstance(w, Tensor) or not w.is_floating_point():
            raise TypeError(f"bjorck_grouped: ws[{i}] must be a floating-point tensor, got "
                            f"{w.dtype if isinstance(w, Tensor) else type(w).__name__}")
        if w.dim() < 2:
            raise ValueError(f"bjorck_grouped: ws[{i}] must have shape (..., m, n), got {tuple(w.shape)}")
        if w.device != ws[0].device:
            raise ValueError(f"bjorck_grouped: all tensors must be on one device, ws[0] is on {ws[0].device}"
                             f" and ws[{i}] on {w.device}")
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"bjorck_grouped: n_iters must be an integer >= 1, got {n_iters!r}")


def bjorck_grouped_reference(ws: list[Tensor], n_iters: int = 15, order: int = 1,
                             beta: float = 0.5) -> list[Tensor]:
    """Pure-torch grouped Björck: :func:`bjorck_reference` of each tensor.

    Args:
        ws: tensors of shapes (..., m_i, n_i), each with spectral norm <= 1.
        n_iters: number of steps.
        order: polynomial order (1 to 4).
        beta: order-1 step size.

    Returns:
        The list of orthonormalized tensors (same shapes and dtypes).

    Examples:
        >>> qs = bjorck_grouped_reference([torch.eye(2) * 0.5, torch.ones(1, 3) / 2], 20)
        >>> [tuple(q.shape) for q in qs]
        [(2, 2), (1, 3)]
    """
    _check(ws, n_iters)
    return [bjorck_reference(w, n_iters, order, beta) for w in ws]


def _unpack(flat: Tensor, shapes: list[int]) -> list[Tensor]:
    sizes = [shapes[i] * shapes[i + 1] for i in range(0, len(shapes), 2)]
    return [p.view(shapes[2 * i], shapes[2 * i + 1]) for i, p in enumerate(flat.split(sizes))]


def bjorck_grouped(ws: list[Tensor], n_iters: int = 15, order: int = 1, beta: float = 0.5) -> list[Tensor]:
    """Orthonormalize many matrices of different shapes, in one kernel launch (differentiable).

    On the Triton path (CUDA, or the interpreter on CPU), every matrix whose smaller side is
    at most ``liptriton.kernels.bjorck.FUSED_MAX_SMALL`` (64) is packed into one buffer and
    orthonormalized by one launch of the fused kernel, one program per matrix (batched
    tensors (B, m, n) count as B matrices); larger ones go through :func:`bjorck` (tiled).
    The backward is one launch as well. float64 inputs and other devices take the torch path.

    Args:
        ws: tensors of shapes (..., m_i, n_i) on one device, each with spectral norm <= 1.
        n_iters: number of steps (>= 1).
        order: polynomial order (1 to 4).
        beta: order-1 step size in (0, 0.5].

    Returns:
        The list of orthonormalized tensors, same shapes and dtypes as ``ws``.

    Examples:
        >>> import liptriton.ops as ops
        >>> ws = [torch.randn(16, 27), torch.randn(32, 144), torch.randn(10, 512)]
        >>> qs = ops.bjorck_grouped([w / torch.linalg.matrix_norm(w, 2) for w in ws], n_iters=25)
        >>> [bool(torch.linalg.svdvals(q).min() > 0.99) for q in qs]
        [True, True, True]
    """
    _check(ws, n_iters)
    bjorck_coefficients(order, beta)  # validates order and beta
    if not ws:
        return []
    if not use_triton(ws[0]) or any(w.dtype == torch.float64 for w in ws):
        return bjorck_grouped_reference(ws, n_iters, order, beta)
    from liptriton.kernels.bjorck import fused_fits

    out: list[Tensor | None] = [None] * len(ws)
    packed, shapes = [], []
    for i, w in enumerate(ws):
        m, n = w.shape[-2:]
        if not fused_fits(m, n) or w.numel() == 0:
            out[i] = bjorck(w, n_iters, order, beta)
            continue
        packed.append(i)
        shapes += [m, n] * (w.numel() // (m * n))
    if packed:
        flat = torch.cat([ws[i].reshape(-1).float() for i in packed])
        y = torch.ops.liptriton.bjorck_grouped(flat, shapes, n_iters, order, float(beta))
        for i, part in zip(packed, y.split([ws[i].numel() for i in packed])):
            out[i] = part.view(ws[i].shape).to(ws[i].dtype)
    return out


if HAS_TRITON:
    from liptriton.kernels.bjorck import bjorck_grouped_backward, bjorck_grouped_forward

    def _pairs(shapes: list[int]) -> list[tuple[int, int]]:
        return [(shapes[i], shapes[i + 1]) for i in range(0, len(shapes), 2)]

    @torch.library.triton_op("liptriton::bjorck_grouped", mutates_args=())
    def _bjorck_grouped_op(flat: Tensor, shapes: list[int], n_iters: int, order: int, beta: float) -> Tensor:
        """Triton path of :func:`bjorck_grouped` on the packed float32 buffer (one launch)."""
        if not kernel_runnable(flat) or flat.numel() == 0:
            return torch.cat([bjorck_reference(x, n_iters, order, beta).reshape(-1)
                              for x in _unpack(flat, shapes)] + [flat.new_empty(0)])
        return bjorck_grouped_forward(flat, _pairs(shapes), n_iters, bjorck_coefficients(order, beta))

    @torch.library.triton_op("liptriton::bjorck_grouped_backward", mutates_args=())
    def _bjorck_grouped_backward_op(flat: Tensor, grad: Tensor, shapes: list[int], n_iters: int, order: int,
                                    beta: float) -> Tensor:
        """Gradient of ``liptriton::bjorck_grouped`` w.r.t. the packed buffer (one launch)."""
        if not kernel_runnable(flat) or flat.numel() == 0:
            parts = zip(_unpack(flat, shapes), _unpack(grad, shapes))
            return torch.cat([bjorck_vjp_reference(x, g, n_iters, order, beta).reshape(-1) for x, g in parts]
                             + [flat.new_empty(0)])
        return bjorck_grouped_backward(flat, grad, _pairs(shapes), n_iters, bjorck_coefficients(order, beta))

    def _setup_context(ctx, inputs, output) -> None:
        flat, shapes, n_iters, order, beta = inputs
        ctx.save_for_backward(flat)  # only the inputs: the backward recomputes the iterates
        ctx.args = (shapes, n_iters, order, beta)

    def _backward(ctx, grad: Tensor):
        (flat,) = ctx.saved_tensors
        return torch.ops.liptriton.bjorck_grouped_backward(flat, grad, *ctx.args), None, None, None, None

    torch.library.register_autograd("liptriton::bjorck_grouped", _backward, setup_context=_setup_context)
