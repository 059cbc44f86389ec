"""Frobenius normalization: ``W * k / ||W||_F``, or each output neuron by its own norm."""

from __future__ import annotations

import math

from torch import Tensor, nn

from liptriton.bounds.conv_reads import max_reads
from liptriton.ops.frobenius import frobenius_normalize
from liptriton.parametrizations._base import LipschitzParametrization, WeightLayout
from liptriton.parametrizations._register import register
from liptriton.parametrizations._checks import check_positive

__all__ = ["Frobenius", "frobenius", "conv_overlap"]


def conv_overlap(layout: WeightLayout) -> int:
    """Largest number of kernel taps that read one input element of the convolution.

    ``||conv|| <= sqrt(overlap) * ||W_reshaped||_2 <= sqrt(overlap) * ||W||_F``: each input
    element appears at most ``overlap`` times in the unfolded (im2col) input. Per dimension,
    taps ``t`` reaching one input position differ by multiples of ``s / gcd(s, d)``. Padding
    modes that copy input elements (reflect, replicate, circular, symmetric) add the reads of
    the copies (:func:`liptriton.bounds.conv_reads.max_reads`, over every input size).
    """
    if layout.spec is None:
        return 1
    spec = layout.spec
    if spec.padding_mode != "zeros" and any(p != (0, 0) for p in spec.padding):
        return max_reads(layout.shape[2:], spec.stride, spec.dilation, spec.padding, spec.padding_mode)
    kernel = layout.shape[2:]
    count = 1
    for k, s, d in zip(kernel, layout.spec.stride, layout.spec.dilation):
        count *= math.ceil(k / (s // math.gcd(s, d)))
    return count


class Frobenius(LipschitzParametrization):
    """``W * k / (||W||_F sqrt(overlap))``, or per output neuron with ``disjoint_neurons``.

    The Frobenius norm bounds the spectral norm, so the bound holds exactly, with no state and
    no iteration. For a convolution the factor ``sqrt(overlap)`` (see :func:`conv_overlap`)
    makes it a bound of the operator. With ``disjoint_neurons`` each output neuron (row of the
    matrix view; output channel of a convolution) is separately k-Lipschitz.

    Args:
        layout: the weight's :class:`WeightLayout`.
        k: the Lipschitz constant (per neuron when ``disjoint_neurons``).
        disjoint_neurons: normalize each output neuron separately.
    """

    def __init__(self, layout: WeightLayout, k: float = 1.0, disjoint_neurons: bool = True) -> None:
        super().__init__(k)
        self.layout = layout
        self.disjoint_neurons = bool(disjoint_neurons)
        self.scale = k / math.sqrt(conv_overlap(layout))
        self.transposed = bool(layout.spec is not None and layout.spec.transposed)

    def set_k(self, k: float) -> None:
        """Make the layer ``k``-Lipschitz from now on (the scale follows ``k``)."""
        self.scale = self.scale * (k / self.k)
        super().set_k(k)

    def lipschitz_bound(self) -> float:
        """The layer's bound: ``k``, or ``k * sqrt(outputs)`` for disjoint neurons (each is k)."""
        if not self.disjoint_neurons:
            return self.k
        outputs = self.layout.shape[1] * self.layout.spec.groups if self.transposed else self.layout.shape[0]
        return self.k * math.sqrt(outputs)

    def compute(self, w: Tensor) -> Tensor:
        if self.transposed:  # output neurons are along dim 1 of a transposed-conv weight
            return frobenius_normalize(w.transpose(0, 1), self.disjoint_neurons).transpose(0, 1) * self.scale
        return frobenius_normalize(w, self.disjoint_neurons) * self.scale


def frobenius(module: nn.Module, name: str = "weight", *, k: float = 1.0,
              disjoint_neurons: bool = True) -> nn.Module:
    """Constrain ``module.<name>`` by Frobenius normalization.

    Args:
        module: an ``nn.Linear``, a convolution, or any module with a 2-D tensor ``name``.
        name: the tensor to constrain.
        k: the Lipschitz constant (> 0): of each output neuron when ``disjoint_neurons``
            (the whole layer then has constant at most ``k * sqrt(out_features)``), of the whole
            layer otherwise.
        disjoint_neurons: normalize each output neuron separately (default, as deel-torchlip).

    Returns:
        ``module``, with the parametrization registered.

    Raises:
        ValueError: bad ``k``, a missing tensor, or an unsupported layer.
        TypeError: a non-floating tensor.

    Examples:
        >>> import torch, liptriton
        >>> lin = liptriton.frobenius(torch.nn.Linear(16, 1))
        >>> round(float(lin.weight.norm()), 4)
        1.0
    """
    owner = f"liptriton.frobenius({type(module).__name__})"
    k = check_positive(owner, "k", k)
    layout = WeightLayout(module, name, owner)
    if layout.spec is not None and layout.spec.transposed and layout.spec.groups > 1 and disjoint_neurons:
        raise ValueError(f"{owner}: disjoint_neurons=True is not supported for grouped transposed "
                         "convolutions (groups > 1); use disjoint_neurons=False")
    return register(module, name, Frobenius(layout, k, disjoint_neurons), layout)
