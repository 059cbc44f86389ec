"""The divisor of a certified parametrization: the proven bound's value with the gradient of the
estimate it certifies (as ``torch.nn.utils.parametrizations.spectral_norm``'s ``u^T W v``, scaled
to the bound). :mod:`liptriton.bounds.certified_norm` proves the bound; this is how the layer
divides by it."""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.bounds._gram_ops import apply as _apply
from liptriton.bounds._gram_ops import dot as _dot

__all__ = ["certified_sigma", "certified_value", "top_index"]


def top_index(h: Tensor, v: Tensor) -> Tensor:
    """Index of the matrix whose Rayleigh quotient ``v_i^H h_i v_i`` is the largest (the block whose
    estimate gives the divisor its gradient).

    Args:
        h: Hermitian matrices (batch, q, q).
        v: unit vectors (batch, q).

    Returns:
        A 0-d long tensor (no host synchronization).

    Examples:
        >>> h = torch.diag_embed(torch.tensor([[1.0, 2.0], [5.0, 0.0]]))
        >>> int(top_index(h, torch.tensor([[0.0, 1.0], [1.0, 0.0]])))
        1
    """
    with torch.no_grad():
        v = v.to(h.dtype)
        return _dot(v, _apply(h, v)).argmax()


def certified_sigma(blocks: Tensor, bound_sq: Tensor, v: Tensor) -> Tensor:
    """The divisor ``sqrt(bound_sq)`` with the gradient of the estimate ``max_i ||B_i v_i||``.

    The value is the certified bound (>= every singular value of every block); the gradient is
    that of the power-iteration estimate, scaled by the ratio bound / estimate (as the gradient
    of ``torch.nn.utils.parametrizations.spectral_norm``'s ``u^T W v``).

    Args:
        blocks: the matrices ``B_i`` (batch, p, q), differentiable.
        bound_sq: the certified bound of ``max_i sigma_max(B_i)^2`` (0-d, no gradient).
        v: unit vectors (batch, q), the top right singular vector estimates (no gradient).

    Returns:
        A 0-d tensor of ``blocks``' dtype whose value is ``sqrt(bound_sq)`` (floored at 1e-30).

    Examples:
        >>> b = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]], requires_grad=True)
        >>> d = certified_sigma(b, torch.tensor(4.0, dtype=torch.float64), torch.tensor([[1.0, 0.0]]))
        >>> d.backward()
        >>> float(d), b.grad[0, 0, 0].item()
        (2.0, 1.0)
    """
    return certified_value(torch.bmm(blocks, v.to(blocks.dtype).unsqueeze(-1)).norm(dim=(-2, -1)).max(), bound_sq)


def certified_value(est: Tensor, bound_sq: Tensor) -> Tensor:
    """The divisor ``sqrt(bound_sq)`` with the gradient of the estimate ``est`` scaled by
    ``bound / est`` (:func:`certified_sigma` for an estimate computed another way, e.g. through
    the convolution operator itself).

    Args:
        est: differentiable estimate(s) of the norm (``||A v||`` for a unit ``v``), 0-d or a batch.
        bound_sq: the certified bound(s) of its square, same shape (no gradient).

    Returns:
        A tensor of ``est``'s dtype and shape whose value is ``sqrt(bound_sq)`` (floored at 1e-30).

    Examples:
        >>> w = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)
        >>> d = certified_value((w @ torch.tensor([1.0, 0.0])).norm(), torch.tensor(9.0, dtype=torch.float64))
        >>> float(d), w.grad is None
        (3.0, True)
    """
    bound = bound_sq.sqrt().to(est.dtype)
    scale = bound / est.detach().clamp_min(1e-30)
    return (bound + scale * (est - est.detach())).clamp_min(1e-30)
