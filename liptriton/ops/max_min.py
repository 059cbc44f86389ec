"""MaxMin: the public op, its torch reference and its dispatch.

``max_min(x, dim) = scale * cat(relu(x), relu(-x), dim)`` (the concatenation deel-torchlip
computes). For each entry the pair ``(relu(x), relu(-x))`` has norm ``|x|`` and, for two inputs
of opposite signs, ``|x - y|^2 >= x^2 + y^2``: the map is 1-Lipschitz in l2 and reaches 1 (on
inputs of one sign), so with ``scale = k`` it is exactly k-Lipschitz.

On CUDA (or CPU under the interpreter switch) the triton_ops ``liptriton::max_min`` and
``liptriton::max_min_backward`` run the kernels of :mod:`liptriton.kernels.max_min` (the
backward's own backward, for double backward, is torch); inside torch.func transforms the
public op takes the torch reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from liptriton.ops._checks import normalize_dim
from liptriton.ops._dispatch import HAS_TRITON, transforms_active, use_triton
from liptriton.ops._register import register_triton_op

__all__ = ["check_max_min_args", "max_min", "max_min_backward_reference", "max_min_reference"]


def check_max_min_args(x: Tensor, dim: int | None, who: str) -> int:
    """Validate the input of a max-min and resolve ``dim``.

    Args:
        x: the input; a floating-point tensor with at least one dimension.
        dim: the doubled dimension; None means 0 for a 1-D input and 1 otherwise (deel-torchlip).
        who: the function or module named in the errors.

    Returns:
        The resolved dimension, >= 0.

    Examples:
        >>> check_max_min_args(torch.zeros(4), None, "MaxMin")
        0
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: input must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: input must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() == 0:
        raise ValueError(f"{who}: input must have at least one dimension, got a scalar")
    if dim is None:
        return 0 if x.dim() == 1 else 1
    return normalize_dim(x, dim, who)


def max_min_reference(x: Tensor, dim: int | None = None, scale: float = 1.0) -> Tensor:
    """Pure-torch ``scale * cat(relu(x), relu(-x), dim)``.

    Args:
        x: floating tensor.
        dim: the doubled dimension; None: 0 for 1-D input, else 1.
        scale: multiplies the output.

    Returns:
        Tensor with twice as many entries along ``dim``.

    Examples:
        >>> max_min_reference(torch.tensor([1.0, -2.0]))
        tensor([1., 0., 0., 2.])
    """
    dim = check_max_min_args(x, dim, "max_min_reference")
    return torch.cat((F.relu(x), F.relu(-x)), dim=dim) * scale


def max_min_backward_reference(grad: Tensor, x: Tensor, dim: int, scale: float = 1.0) -> Tensor:
    """Pure-torch gradient of :func:`max_min_reference` w.r.t. ``x`` (relu'(0) = 0).

    Args:
        grad: gradient of the output (twice ``x.shape[dim]`` along ``dim``).
        x: the forward input.
        dim: the resolved dimension (>= 0).
        scale: as in the forward.

    Returns:
        Tensor shaped like ``x``.

    Examples:
        >>> max_min_backward_reference(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, -2.0]), 0)
        tensor([ 1., -4.])
    """
    g_pos, g_neg = grad.split(x.shape[dim], dim)
    zero = torch.zeros((), dtype=grad.dtype, device=grad.device)
    return (torch.where(x > 0, g_pos, zero) - torch.where(x < 0, g_neg, zero)) * scale


if HAS_TRITON:
    from liptriton.kernels import max_min as _kernels

    def _max_min_definition(x: Tensor, dim: int, scale: float) -> Tensor:
        return max_min_reference(x, dim, scale)

    def _max_min_double_backward(grad_dx: Tensor, x: Tensor, dim: int, scale: float) -> Tensor:
        # dx is linear in dy with a mask locally constant in x: vjp w.r.t. dy, zero w.r.t. x.
        zero = torch.zeros((), dtype=grad_dx.dtype, device=grad_dx.device)
        pos, neg = torch.where(x > 0, grad_dx, zero), torch.where(x < 0, -grad_dx, zero)
        return torch.cat((pos, neg), dim) * scale

    def _max_min_forward(x: Tensor, dim: int, scale: float) -> Tensor:
        return _kernels.max_min_forward(x, dim, scale)

    def _max_min_backward(grad: Tensor, x: Tensor, dim: int, scale: float) -> Tensor:
        return _kernels.max_min_backward(grad, x, dim, scale)

    register_triton_op("max_min", reference=_max_min_definition, forward=_max_min_forward,
                       reference_backward=max_min_backward_reference, backward=_max_min_backward,
                       double_backward=_max_min_double_backward)


def max_min(x: Tensor, dim: int | None = None, scale: float = 1.0) -> Tensor:
    """MaxMin ``scale * cat(relu(x), relu(-x), dim)`` (differentiable; Triton on CUDA).

    Args:
        x: floating tensor of any rank >= 1.
        dim: the doubled dimension; None: 0 for a 1-D input, 1 otherwise; negative counts
            from the end.
        scale: multiplies the output, fused into the kernel.

    Returns:
        Tensor with ``2 * x.shape[dim]`` entries along ``dim``.

    Raises:
        TypeError: non-floating input or non-int dim.
        ValueError: dim out of range.

    Examples:
        >>> import liptriton.ops as ops
        >>> ops.max_min(torch.tensor([[1.0, -2.0]]))
        tensor([[1., 0., 0., 2.]])
    """
    dim = check_max_min_args(x, dim, "max_min")
    kernel_dtype = x.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    if use_triton(x) and kernel_dtype and not transforms_active():
        return torch.ops.liptriton.max_min(x, dim, float(scale))
    return max_min_reference(x, dim, scale)
