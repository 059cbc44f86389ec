"""Frobenius normalization: the public op, its torch reference and its dispatch."""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._dispatch import HAS_TRITON, float32_compute, use_triton
from liptriton.ops._register import register_triton_op

__all__ = ["frobenius_normalize", "frobenius_normalize_reference"]

_EPS = 1e-12


def _check(w: Tensor) -> None:
    if not w.is_floating_point():
        raise TypeError(f"frobenius_normalize: w must be a floating-point tensor, got dtype {w.dtype}")
    if w.dim() < 1 or w.numel() == 0:
        raise ValueError(f"frobenius_normalize: w must be a non-empty tensor, got shape {tuple(w.shape)}")


def frobenius_normalize_reference(w: Tensor, disjoint_neurons: bool = False, eps: float = _EPS) -> Tensor:
    """Pure-torch ``W / ||W||_F``, or each output neuron (row of dim 0) by its own norm.

    Args:
        w: weight of any shape; dim 0 indexes output neurons.
        disjoint_neurons: normalize each ``w[i]`` separately (True) or the whole tensor.
        eps: floor of the norm.

    Returns:
        The normalized weight, same shape and dtype.

    Examples:
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
        >>> frobenius_normalize_reference(w, disjoint_neurons=True)
        tensor([[0.6000, 0.8000],
                [0.0000, 1.0000]])
    """
    _check(w)
    x = float32_compute(w)
    flat = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
    if disjoint_neurons:
        norm = flat.norm(dim=1, keepdim=True)
    else:
        norm = flat.norm()
    return (flat / norm.clamp_min(eps)).reshape(w.shape).to(w.dtype)


def frobenius_normalize(w: Tensor, disjoint_neurons: bool = False, eps: float = _EPS) -> Tensor:
    """Normalize ``w`` by its Frobenius norm, or each output neuron by its own (differentiable).

    One fused Triton kernel (norm and scale) forward and one backward on CUDA; the torch
    reference :func:`frobenius_normalize_reference` elsewhere.

    Args:
        w: weight of any shape; dim 0 indexes output neurons.
        disjoint_neurons: per-neuron normalization (each row then has norm 1, and each output
            is 1-Lipschitz on its own) instead of the whole tensor.
        eps: floor of the norm.

    Returns:
        The normalized weight, same shape and dtype as ``w``.

    Examples:
        >>> import liptriton.ops as ops
        >>> w = ops.frobenius_normalize(torch.randn(4, 3, 3, 3))
        >>> round(float(w.norm()), 4)
        1.0
    """
    _check(w)
    if use_triton(w):
        return torch.ops.liptriton.frobenius_normalize(w, bool(disjoint_neurons), float(eps))
    return frobenius_normalize_reference(w, disjoint_neurons, eps)


def _rows(w: Tensor, disjoint_neurons: bool) -> Tensor:
    """The (R, K) view the kernels work on: one row per neuron, or one row in all."""
    return w.reshape(w.shape[0], -1) if disjoint_neurons and w.dim() > 1 else w.reshape(1, -1)


def _frobenius_backward_reference(grad: Tensor, w: Tensor, disjoint_neurons: bool, eps: float) -> Tensor:
    """Torch formula of the backward: ``g / n - x <g, x> / n^3`` (no second term where n < eps)."""
    x, g = _rows(float32_compute(w), disjoint_neurons), _rows(float32_compute(grad), disjoint_neurons)
    norm = x.norm(dim=1, keepdim=True)
    inv = 1.0 / norm.clamp_min(eps)
    c = (g * x).sum(dim=1, keepdim=True) * inv**3 * (norm >= eps).to(x.dtype)
    return (g * inv - x * c).reshape(w.shape).to(w.dtype)


if HAS_TRITON:
    from liptriton.kernels.frobenius import frobenius_backward, frobenius_forward

    def _frobenius_forward(w: Tensor, disjoint_neurons: bool, eps: float) -> Tensor:
        """Triton path of :func:`frobenius_normalize` (one fused norm-and-scale kernel)."""
        _check(w)
        return frobenius_forward(_rows(w, disjoint_neurons), eps).reshape(w.shape)

    def _frobenius_backward(grad: Tensor, w: Tensor, disjoint_neurons: bool, eps: float) -> Tensor:
        rows = _rows(w, disjoint_neurons)
        return frobenius_backward(grad.reshape(rows.shape), rows, eps).reshape(w.shape)

    register_triton_op("frobenius_normalize", reference=frobenius_normalize_reference, forward=_frobenius_forward,
                       reference_backward=_frobenius_backward_reference, backward=_frobenius_backward)
