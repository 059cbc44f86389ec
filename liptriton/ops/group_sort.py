"""GroupSort / FullSort: the public ops, their torch references and their dispatch.

GroupSort splits the entries along ``dim`` into groups of ``group_size`` consecutive entries and
sorts each group in ascending order; FullSort is one group of the whole dim. Sorting is a
permutation that depends on the input, piecewise linear and norm-preserving, so the map is
1-Lipschitz in l2 and reaches 1; multiplied by ``scale = k`` it is exactly k-Lipschitz.

On CUDA (or CPU under the interpreter switch) the triton_op ``liptriton::group_sort`` runs the
kernels of :mod:`liptriton.kernels.group_sort` (group 2: a compare-exchange; larger groups:
``tl.sort`` of packed keys), and ``liptriton::group_sort_backward`` scatters the gradient by
the permutation recomputed from the input (its own backward, for double backward, is torch).
float64 groups larger than 2, groups over 8192 entries and calls inside torch.func transforms
take the torch reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._checks import normalize_dim
from liptriton.ops._dispatch import HAS_TRITON, kernel_runnable, transforms_active, use_triton
from liptriton.ops._register import register_triton_op

__all__ = [
    "check_group_sort_args",
    "full_sort",
    "group_sort",
    "group_sort_backward_reference",
    "group_sort_reference",
]


def check_group_sort_args(x: Tensor, group_size: int | None, dim: int, who: str) -> tuple[int, int]:
    """Validate the arguments of a group sort and resolve them.

    Args:
        x: the input; must be a floating-point tensor with at least one dimension.
        group_size: a positive int dividing ``x.shape[dim]``; None, or a value larger than
            ``x.shape[dim]``, means the whole dim (FullSort), as in deel-torchlip.
        dim: the sorted dimension (negative counts from the end).
        who: the function or module named in the errors.

    Returns:
        ``(group_size, dim)`` resolved: an int dividing the channel count, a dim >= 0.

    Examples:
        >>> check_group_sort_args(torch.zeros(2, 6), None, 1, "FullSort")
        (6, 1)
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{who}: input must have at least one dimension, got a scalar")
    dim = normalize_dim(x, dim, who)
    channels = x.shape[dim]
    if group_size is None:
        return max(channels, 1), dim
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"{who}: group_size must be an int or None, got {type(group_size).__name__}")
    if group_size < 1:
        raise ValueError(f"{who}: group_size must be a positive int (or None for the whole dim), "
                         f"got {group_size}")
    group_size = min(group_size, channels) if channels > 0 else group_size
    if channels % group_size != 0:
        raise ValueError(f"{who}: the size {channels} of dim {dim} (input shape {tuple(x.shape)}) must be "
                         f"a multiple of group_size={group_size}; allowed group sizes are its divisors")
    return group_size, dim


def _grouped_shape(x: Tensor, group_size: int, dim: int) -> tuple[int, ...]:
    return (*x.shape[:dim], x.shape[dim] // group_size, group_size, *x.shape[dim + 1:])


def _swaps(v: Tensor, dim: int) -> Tensor:
    """Where a group of 2 (dimension ``dim + 1`` of ``v``) is strictly out of order (ties stay)."""
    a, b = v.unbind(dim + 1)
    return a > b


def _exchange(v: Tensor, swap: Tensor, dim: int) -> Tensor:
    """Exchange the two entries of each group of 2 (dimension ``dim + 1`` of ``v``) where ``swap``."""
    a, b = v.unbind(dim + 1)
    return torch.stack((torch.where(swap, b, a), torch.where(swap, a, b)), dim + 1)


def group_sort_reference(x: Tensor, group_size: int | None = None, dim: int = 1,
                         scale: float = 1.0) -> Tensor:
    """Pure-torch GroupSort: sort groups of ``group_size`` consecutive entries along ``dim``, times ``scale``.

    Ties keep their input order (a stable sort), so the gradient is a permutation. Group 2 is
    a compare-exchange (swap only when strictly out of order).

    Args:
        x: floating tensor.
        group_size: a divisor of ``x.shape[dim]``; None for the whole dim.
        dim: the sorted dimension.
        scale: multiplies the output (k of a k-Lipschitz activation).

    Returns:
        Tensor shaped like ``x``.

    Examples:
        >>> group_sort_reference(torch.tensor([[3.0, 1.0, 2.0, 0.0]]), 2)
        tensor([[1., 3., 0., 2.]])
    """
    group_size, dim = check_group_sort_args(x, group_size, dim, "group_sort_reference")
    if group_size == 1:
        return x * scale
    v = x.reshape(_grouped_shape(x, group_size, dim))
    if group_size == 2:
        y = _exchange(v, _swaps(v, dim), dim)
    else:
        y = torch.sort(v, dim=dim + 1, stable=True).values
    return (y * scale).reshape(x.shape)


def group_sort_backward_reference(grad: Tensor, x: Tensor, group_size: int, dim: int,
                                  scale: float = 1.0) -> Tensor:
    """Pure-torch gradient of :func:`group_sort_reference` w.r.t. ``x`` (explicit, no autograd).

    Args:
        grad: gradient of the output, shaped like ``x``.
        x: the forward input.
        group_size: the resolved group size (a divisor of ``x.shape[dim]``).
        dim: the resolved dimension (>= 0).
        scale: as in the forward.

    Returns:
        ``grad`` scattered back by the sort permutation, times ``scale``.

    Examples:
        >>> x = torch.tensor([[3.0, 1.0]])
        >>> group_sort_backward_reference(torch.tensor([[10.0, 20.0]]), x, 2, 1)
        tensor([[20., 10.]])
    """
    shape = _grouped_shape(x, group_size, dim)
    g = grad.reshape(shape)
    if group_size == 1:
        return grad * scale
    v = x.reshape(shape)
    if group_size == 2:
        dx = _exchange(g, _swaps(v, dim), dim)  # an exchange is its own inverse
    else:
        perm = torch.sort(v, dim=dim + 1, stable=True).indices
        dx = torch.zeros_like(g).scatter(dim + 1, perm, g)
    return (dx * scale).reshape(x.shape)


if HAS_TRITON:
    from liptriton.kernels import group_sort as _kernels

    def _group_sort_definition(x: Tensor, group_size: int, dim: int, scale: float) -> Tensor:
        return group_sort_reference(x, group_size, dim, scale)

    def _takes_kernel(x: Tensor, group_size: int, *args) -> bool:
        return kernel_runnable(x) and _kernels.sort_supported(x, group_size)

    def _group_sort_double_backward(grad_dx: Tensor, x: Tensor, group_size: int, dim: int, scale: float) -> Tensor:
        # dx = scale * P^T dy is linear in dy (P: the sort permutation, locally constant in x):
        # its vjp w.r.t. dy applies P; w.r.t. x it is zero. Torch ops: double backward is rare.
        return _apply_sort_permutation(grad_dx, x, group_size, dim, scale)

    def _group_sort_forward(x: Tensor, group_size: int, dim: int, scale: float) -> Tensor:
        return _kernels.group_sort_forward(x, group_size, dim, scale)

    def _group_sort_backward(grad: Tensor, x: Tensor, group_size: int, dim: int, scale: float) -> Tensor:
        return _kernels.group_sort_backward(grad, x, group_size, dim, scale)

    register_triton_op("group_sort", reference=_group_sort_definition, forward=_group_sort_forward,
                       reference_backward=group_sort_backward_reference, backward=_group_sort_backward,
                       takes_kernel=_takes_kernel, double_backward=_group_sort_double_backward)


def _apply_sort_permutation(v: Tensor, x: Tensor, group_size: int, dim: int, scale: float) -> Tensor:
    """Permute ``v`` within each group the way sorting permutes ``x`` (times ``scale``)."""
    shape = _grouped_shape(x, group_size, dim)
    w, xg = v.reshape(shape), x.reshape(shape)
    if group_size == 2:
        out = _exchange(w, _swaps(xg, dim), dim)
    else:
        out = torch.gather(w, dim + 1, torch.sort(xg, dim=dim + 1, stable=True).indices)
    return (out * scale).reshape(x.shape)


def _kernel_takes(x: Tensor, group_size: int) -> bool:
    if group_size == 1:
        return False  # a plain scaling: nothing to sort
    return group_sort_supported(x, group_size)


def group_sort_supported(x: Tensor, group_size: int) -> bool:
    """Return True when the Triton kernels handle ``x`` with this (resolved) group size.

    Args:
        x: the input tensor.
        group_size: the resolved group size.

    Returns:
        True for float16/bfloat16/float32 with groups up to 8192, and float64 with groups of 2.

    Examples:
        >>> group_sort_supported(torch.zeros(2, 4, dtype=torch.float64), 4)
        False
    """
    if x.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return group_size <= 8192
    return x.dtype == torch.float64 and group_size <= 2


def group_sort(x: Tensor, group_size: int | None = None, dim: int = 1, scale: float = 1.0) -> Tensor:
    """GroupSort along ``dim``, times ``scale`` (differentiable; Triton on CUDA).

    Sorts each group of ``group_size`` consecutive entries of ``dim`` in ascending order (ties
    keep their order) and multiplies by ``scale``: an exactly ``|scale|``-Lipschitz map.

    Args:
        x: floating tensor of any rank >= 1.
        group_size: a divisor of ``x.shape[dim]``; None (or a larger value) sorts the whole dim.
        dim: the sorted dimension, negative counts from the end.
        scale: multiplies the output, fused into the kernel.

    Returns:
        Tensor shaped like ``x`` (contiguous on the Triton path).

    Raises:
        TypeError: non-floating input, a non-int group_size or dim.
        ValueError: a dim out of range, a group size that does not divide the dim.

    Examples:
        >>> import liptriton.ops as ops
        >>> ops.group_sort(torch.tensor([[0.5, -1.0, 2.0, 1.0]]), 2)
        tensor([[-1.0000,  0.5000,  1.0000,  2.0000]])
    """
    group_size, dim = check_group_sort_args(x, group_size, dim, "group_sort")
    if use_triton(x) and _kernel_takes(x, group_size) and not transforms_active():
        return torch.ops.liptriton.group_sort(x, group_size, dim, float(scale))
    if (group_size == 2 and x.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not transforms_active()):
        return _GroupSort2.apply(x, dim, float(scale))
    return group_sort_reference(x, group_size, dim, scale)


class _GroupSort2(torch.autograd.Function):
    """Eager group-2 sort off the kernels: :func:`group_sort_reference`'s values, and a backward
    that reuses the forward's swap mask (two ``where`` instead of autograd's four through the
    reference, and no ``unbind``/``stack`` nodes). Measured (CPU, one thread, forward + backward):
    (64, 32, 28, 28) 28.5 -> 17.3 ms, (64, 16, 8, 8) 1.12 -> 0.80 ms. Ties and NaN as the reference
    (swap only when strictly out of order); the backward is differentiable in the gradient
    (double backward: the permutation is locally constant)."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int, scale: float) -> Tensor:
        v = x.reshape(_grouped_shape(x, 2, dim))
        swap = _swaps(v, dim)
        ctx.save_for_backward(swap)
        ctx.dim, ctx.scale = dim, scale
        y = _exchange(v, swap, dim).reshape(x.shape)
        return y if scale == 1.0 else y * scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (swap,) = ctx.saved_tensors
        dx = _exchange(grad.reshape(_grouped_shape(grad, 2, ctx.dim)), swap, ctx.dim).reshape(grad.shape)
        return (dx if ctx.scale == 1.0 else dx * ctx.scale), None, None


def full_sort(x: Tensor, dim: int = 1, scale: float = 1.0) -> Tensor:
    """FullSort: sort the whole of ``dim`` in ascending order, times ``scale`` (``group_sort(x, None)``).

    Args:
        x: floating tensor of any rank >= 1.
        dim: the sorted dimension, negative counts from the end.
        scale: multiplies the output.

    Returns:
        Tensor shaped like ``x``.

    Examples:
        >>> import liptriton.ops as ops
        >>> ops.full_sort(torch.tensor([[3.0, 1.0, 2.0]]))
        tensor([[1., 2., 3.]])
    """
    return group_sort(x, None, dim, scale)
