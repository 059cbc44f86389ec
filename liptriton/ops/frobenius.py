"""Frobenius normalization: the public op, its torch reference and its dispatch."""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._dispatch import float32_compute, use_triton

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

    Example:
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

    Example:
        >>> import liptriton.ops as ops
        >>> w = ops.frobenius_normalize(torch.randn(4, 3, 3, 3))
        >>> round(float(w.norm()), 4)
        1.0
    """
    _check(w)
    if use_triton(w):
        return torch.ops.liptriton.frobenius_normalize(w, bool(disjoint_neurons), float(eps))
    return frobenius_normalize_reference(w, disjoint_neurons, eps)
