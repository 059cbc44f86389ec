"""Lipschitz activations as functions: MaxMin, GroupSort, FullSort, Lipschitz PReLU, Householder.

Each function is exactly ``k_coef_lip``-Lipschitz in l2 (the bound holds and is reached). The
sorting activations and MaxMin are one fused Triton kernel each on CUDA (the scaling by k is
inside the kernel), so compiling them gains nothing and they run eagerly; the elementwise
compositions (``lipschitz_prelu``, ``householder_activation``) compile on first use where the
config asks for it (:func:`liptriton.config.compile_functionals`).

Differences from deel-torchlip (equal outputs at ``k_coef_lip=1``):

* ``lipschitz_prelu``: deel-torchlip computes ``prelu(x, clamp(a, -k, k))``, whose Lipschitz
  constant is ``max(1, |a'|)``: above k when k < 1, usually below it when k > 1. Here it is
  ``k * prelu(x, clamp(a, -1, 1))``: exactly k.
* ``householder_activation``: deel-torchlip's HouseHolder ignores ``k_coef_lip``; here the
  output is multiplied by k.
* the other activations multiply by k as deel-torchlip does, and accept negative dims.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from liptriton._compile import compiled_functional
from liptriton.ops._checks import normalize_dim
from liptriton.ops.group_sort import check_group_sort_args
from liptriton.ops.group_sort import group_sort as _group_sort_op
from liptriton.ops.max_min import check_max_min_args
from liptriton.ops.max_min import max_min as _max_min_op

__all__ = [
    "full_sort",
    "group_sort",
    "group_sort_2",
    "householder_activation",
    "lipschitz_prelu",
    "max_min",
]


def check_k_coef_lip(k_coef_lip: float, who: str) -> float:
    """Return ``k_coef_lip`` as a float after checking it is a finite positive number.

    Args:
        k_coef_lip: the Lipschitz constant to enforce.
        who: the function or module named in the error.

    Returns:
        ``float(k_coef_lip)``.

    Examples:
        >>> check_k_coef_lip(2, "GroupSort")
        2.0
    """
    if isinstance(k_coef_lip, bool) or not isinstance(k_coef_lip, (int, float, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"{who}: k_coef_lip must be a positive float, got {type(k_coef_lip).__name__}")
    if not 0 < k_coef_lip < math.inf:  # also false for NaN
        raise ValueError(f"{who}: k_coef_lip must be a finite positive float, got {k_coef_lip}")
    if isinstance(k_coef_lip, (torch.SymInt, torch.SymFloat)):
        return k_coef_lip  # symbolic under torch.compile(dynamic=True): keep it so
    return float(k_coef_lip)


def _max_min(input: Tensor, dim: int | None, k_coef_lip: float, who: str) -> Tensor:
    k = check_k_coef_lip(k_coef_lip, who)
    dim = check_max_min_args(input, dim, who)
    return _max_min_op(input, dim, k)


def _group_sort(input: Tensor, group_size: int | None, dim: int, k_coef_lip: float, who: str) -> Tensor:
    k = check_k_coef_lip(k_coef_lip, who)
    group_size, dim = check_group_sort_args(input, group_size, dim, who)
    return _group_sort_op(input, group_size, dim, k)


def max_min(input: Tensor, dim: int | None = None, k_coef_lip: float = 1.0) -> Tensor:
    r"""MaxMin: ``k * cat(relu(x), relu(-x), dim)``, exactly k-Lipschitz.

    Args:
        input: floating tensor, (C) or (N, C, \*).
        dim: the doubled dimension; None: 0 for a 1-D input, 1 otherwise (as deel-torchlip).
        k_coef_lip: k, multiplies the output.

    Returns:
        Tensor with ``2 * input.shape[dim]`` entries along ``dim``.

    Examples:
        >>> max_min(torch.tensor([[1.0, -2.0]]))
        tensor([[1., 0., 0., 2.]])
    """
    return _max_min(input, dim, k_coef_lip, "max_min")


def group_sort(input: Tensor, group_size: int | None = None, dim: int = 1, k_coef_lip: float = 1.0) -> Tensor:
    r"""GroupSort: sort each group of ``group_size`` consecutive entries of ``dim``, times k.

    A data-dependent permutation is norm-preserving and the map is continuous, so the result
    is exactly k-Lipschitz. Ties keep their input order.

    Args:
        input: floating tensor (N, C, \*) (any rank >= 1 with a valid ``dim``).
        group_size: a divisor of ``input.shape[dim]``; None (or a larger value) sorts the whole
            dim, as in deel-torchlip.
        dim: the sorted dimension (default 1, the channels); negative counts from the end.
        k_coef_lip: k, multiplies the output.

    Returns:
        Tensor shaped like ``input``.

    Examples:
        >>> group_sort(torch.tensor([[0.2, -2.0, 0.6, 0.5]]), 2)
        tensor([[-2.0000,  0.2000,  0.5000,  0.6000]])
    """
    return _group_sort(input, group_size, dim, k_coef_lip, "group_sort")


def group_sort_2(input: Tensor, dim: int = 1, k_coef_lip: float = 1.0) -> Tensor:
    r"""GroupSort with groups of 2: ``(min, max)`` of each pair along ``dim``, times k.

    Args:
        input: floating tensor (N, C, \*) with an even ``input.shape[dim]``.
        dim: the sorted dimension (default 1).
        k_coef_lip: k, multiplies the output.

    Returns:
        Tensor shaped like ``input``.

    Examples:
        >>> group_sort_2(torch.tensor([[3.0, 1.0]]))
        tensor([[1., 3.]])
    """
    return _group_sort(input, 2, dim, k_coef_lip, "group_sort_2")


def full_sort(input: Tensor, dim: int = 1, k_coef_lip: float = 1.0) -> Tensor:
    r"""FullSort: sort the whole of ``dim`` in ascending order, times k.

    Args:
        input: floating tensor (N, C, \*).
        dim: the sorted dimension (default 1).
        k_coef_lip: k, multiplies the output.

    Returns:
        Tensor shaped like ``input``.

    Examples:
        >>> full_sort(torch.tensor([[3.0, 1.0, 2.0]]))
        tensor([[1., 2., 3.]])
    """
    return _group_sort(input, None, dim, k_coef_lip, "full_sort")


@compiled_functional
def lipschitz_prelu(input: Tensor, weight: Tensor, k_coef_lip: float = 1.0) -> Tensor:
    r"""Exactly k-Lipschitz PReLU: ``k * prelu(x, clamp(a, -1, 1))``.

    .. math::
        \text{LPReLU}(x) = k \cdot \begin{cases} x, & x \geq 0 \\ a' x, & x < 0 \end{cases},
        \qquad a' = \min(\max(a, -1), 1)

    The slopes are ``k`` and ``k a'`` with ``|a'| <= 1``: the constant is exactly k. (At k = 1
    this is deel-torchlip's ``lipschitz_prelu``; for other k deel-torchlip clamps ``a`` to
    [-k, k] without scaling, which is ``max(1, |a'|)``-Lipschitz, not k.)

    Args:
        input: floating tensor; the channel dim is 1 (as :func:`torch.nn.functional.prelu`).
        weight: the learnable slopes ``a``: one, or one per channel.
        k_coef_lip: k.

    Returns:
        Tensor shaped like ``input``.

    Examples:
        >>> lipschitz_prelu(torch.tensor([2.0, -2.0]), torch.tensor([3.0]), 0.5)
        tensor([ 1., -1.])
    """
    k = check_k_coef_lip(k_coef_lip, "lipschitz_prelu")
    if not input.is_floating_point():
        raise TypeError(f"lipschitz_prelu: input must be a floating-point tensor, got dtype {input.dtype}")
    return F.prelu(input, weight.clamp(-1.0, 1.0)) * k


@compiled_functional
def householder_activation(input: Tensor, theta: Tensor, dim: int = 1, k_coef_lip: float = 1.0) -> Tensor:
    r"""Householder activation (Singla et al. 2022), times k: exactly k-Lipschitz.

    ``input`` is split in halves ``(x, y)`` along ``dim``; each pair ``(x_i, y_i)`` is kept when
    ``x sin(theta/2) - y cos(theta/2) <= 0`` and otherwise reflected across the line of angle
    ``theta/2``: ``(x cos(theta) + y sin(theta), x sin(theta) - y cos(theta))``. The points on
    the line are fixed by the reflection, so the map is continuous and piecewise orthogonal.

    Args:
        input: floating tensor with an even size along ``dim``.
        theta: angles, ``input.shape[dim] // 2`` of them.
        dim: the split dimension (default 1, the channels).
        k_coef_lip: k, multiplies the output.

    Returns:
        Tensor shaped like ``input``.

    Examples:
        >>> z = torch.tensor([[1.0, 0.0]])
        >>> householder_activation(z, torch.tensor([torch.pi / 2]))
        tensor([[-4.3711e-08,  1.0000e+00]])
    """
    k = check_k_coef_lip(k_coef_lip, "householder_activation")
    if not input.is_floating_point():
        raise TypeError(f"householder_activation: input must be a floating-point tensor, "
                        f"got dtype {input.dtype}")
    dim = normalize_dim(input, dim, "householder_activation")
    channels = input.shape[dim]
    if channels % 2 != 0 or theta.numel() != channels // 2:
        raise ValueError(f"householder_activation: input needs an even size along dim {dim} and theta "
                         f"half as many entries; got size {channels} and theta of {theta.numel()}")
    view = [1] * input.dim()
    view[dim] = channels // 2
    theta = theta.reshape(view)
    x, y = input.split(channels // 2, dim)
    reflect = x * torch.sin(0.5 * theta) - y * torch.cos(0.5 * theta) > 0
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = torch.where(reflect, x * cos + y * sin, x)
    b = torch.where(reflect, x * sin - y * cos, y)
    return torch.cat((a, b), dim) * k
