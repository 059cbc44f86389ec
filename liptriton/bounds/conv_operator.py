"""The linear operator a convolution layer applies, its adjoint, and its norm by power iteration.

A :class:`ConvSpec` describes the operator exactly as ``nn.ConvNd`` / ``nn.ConvTransposeNd``
apply it (bias excluded): stride, padding (numbers or "same", any ``padding_mode``), dilation,
groups and output padding. :func:`conv_apply` and :func:`conv_adjoint` are exact adjoints
(``<A x, y> = <x, A^T y>``), so ``x <- A^T A x`` converges to the top right singular vector
and ``||A x||`` to the operator norm at that input size. The hot loop is cuDNN/oneDNN
convolution itself, so this op has no Triton kernel.

Non-zero padding modes (reflect, replicate, circular, symmetric) are gathers: the padded
input is ``x.flatten()[index]``; the adjoint scatters back with ``index_add``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ConvSpec", "conv_apply", "conv_adjoint", "conv_power_iteration", "conv_subspace_iteration",
    "conv_operator_norm",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_PAD_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")


@dataclass(frozen=True)
class ConvSpec:
    """Geometry of a convolution operator (everything but the weight and the input size).

    Args:
        ndim: number of spatial dimensions (1, 2 or 3).
        transposed: True for ConvTranspose layers.
        stride: per spatial dimension.
        padding: per spatial dimension as (before, after) pairs, already resolved ("same"
            becomes explicit, possibly asymmetric, numbers).
        dilation: per spatial dimension.
        groups: number of groups.
        output_padding: per spatial dimension (transposed convolutions).
        padding_mode: "zeros", "reflect", "replicate", "circular" or "symmetric".

    Examples:
        >>> spec = ConvSpec.from_module(torch.nn.Conv2d(3, 8, 3, padding="same"))
        >>> spec.padding
        ((1, 1), (1, 1))
    """

    ndim: int
    transposed: bool
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...]
    padding_mode: str

    @staticmethod
    def from_module(module: torch.nn.Module, padding_mode: str | None = None) -> ConvSpec:
        """Read the operator geometry of an ``nn.ConvNd`` or ``nn.ConvTransposeNd``.

        Args:
            module: the convolution layer.
            padding_mode: override of ``module.padding_mode`` (e.g. "symmetric").

        Returns:
            The :class:`ConvSpec`.

        Raises:
            ValueError: if the module is not a supported convolution or its padding mode is unknown.
        """
        if not isinstance(module, torch.nn.modules.conv._ConvNd):
            raise ValueError(f"ConvSpec: expected an nn.ConvNd or nn.ConvTransposeNd, got {type(module).__name__}")
        nd = len(module.kernel_size)
        mode = padding_mode or module.padding_mode
        if mode not in _PAD_MODES:
            raise ValueError(f"{type(module).__name__}: padding_mode must be one of {_PAD_MODES}, got {mode!r}")
        if isinstance(module.padding, str):
            if module.padding == "valid":
                pads = tuple((0, 0) for _ in range(nd))
            else:  # "same": total d (k - 1), the extra element after (as torch does)
                totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
                pads = tuple((t // 2, t - t // 2) for t in totals)
        else:
            pads = tuple((p, p) for p in module.padding)
        return ConvSpec(
            ndim=nd,
            transposed=bool(module.transposed),
            stride=tuple(module.stride),
            padding=pads,
            dilation=tuple(module.dilation),
            groups=int(module.groups),
            output_padding=tuple(module.output_padding),
            padding_mode=mode,
        )

    def output_shape(self, weight: Tensor, input_spatial: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial output size of the operator for an input of spatial size ``input_spatial``."""
        k = weight.shape[2:]
        out = []
        for i, n in enumerate(input_spatial):
            (pb, pa), s, d = self.padding[i], self.stride[i], self.dilation[i]
            if self.transposed:
                out.append((n - 1) * s - pb - pa + d * (k[i] - 1) + self.output_padding[i] + 1)
            else:
                out.append((n + pb + pa - d * (k[i] - 1) - 1) // s + 1)
        return tuple(out)


def _flat_pads(spec: ConvSpec) -> list[int]:
    # F.pad wants (last_before, last_after, ..., first_before, first_after).
    return [p for pair in reversed(spec.padding) for p in pair]


def _pad_index(spec: ConvSpec, spatial: tuple[int, ...], device: torch.device) -> Tensor:
    """Flat source index of every element of the padded input (padding modes that gather)."""
    n = math.prod(spatial)
    idx = torch.arange(n, dtype=torch.float64, device=device).reshape(1, 1, *spatial)
    if spec.padding_mode == "symmetric":
        for dim in range(spec.ndim):  # mirror including the edge element
            before, after = spec.padding[dim]
            axis = 2 + dim
            parts = []
            if before:
                parts.append(idx.narrow(axis, 0, before).flip(axis))
            parts.append(idx)
            if after:
                parts.append(idx.narrow(axis, idx.shape[axis] - after, after).flip(axis))
            idx = torch.cat(parts, dim=axis)
    else:
        idx = F.pad(idx, _flat_pads(spec), mode=spec.padding_mode)
    return idx.reshape(-1).long()


def _pad(spec: ConvSpec, x: Tensor) -> Tensor:
    if all(p == (0, 0) for p in spec.padding):
        return x
    if spec.padding_mode == "zeros":
        return F.pad(x, _flat_pads(spec))
    idx = _pad_index(spec, tuple(x.shape[2:]), x.device)
    padded = tuple(n + b + a for n, (b, a) in zip(x.shape[2:], spec.padding))
    return x.flatten(2)[..., idx].reshape(*x.shape[:2], *padded)


def _pad_adjoint(spec: ConvSpec, y: Tensor, spatial: tuple[int, ...]) -> Tensor:
    if all(p == (0, 0) for p in spec.padding):
        return y
    if spec.padding_mode == "zeros":
        for dim, (b, _) in enumerate(spec.padding):
            y = y.narrow(2 + dim, b, spatial[dim])
        return y
    idx = _pad_index(spec, spatial, y.device)
    out = y.new_zeros(*y.shape[:2], math.prod(spatial))
    out.index_add_(2, idx, y.flatten(2))
    return out.reshape(*y.shape[:2], *spatial)


def conv_apply(spec: ConvSpec, weight: Tensor, x: Tensor) -> Tensor:
    """Apply the convolution operator (no bias) exactly as the layer does.

    Args:
        spec: the operator geometry.
        weight: the layer's weight.
        x: input of shape (N, C_in, *spatial).

    Returns:
        The output of shape (N, C_out, *spatial_out).

    Examples:
        >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False)
        >>> x = torch.randn(1, 2, 5, 5)
        >>> torch.allclose(conv_apply(ConvSpec.from_module(conv), conv.weight, x), conv(x), atol=1e-6)
        True
    """
    if spec.transposed:
        return _CONV_T[spec.ndim](x, weight, stride=spec.stride, padding=[b for b, _ in spec.padding],
                                  output_padding=spec.output_padding, groups=spec.groups,
                                  dilation=spec.dilation)
    return _CONV[spec.ndim](_pad(spec, x), weight, stride=spec.stride, dilation=spec.dilation,
                            groups=spec.groups)


def conv_adjoint(spec: ConvSpec, weight: Tensor, y: Tensor, input_spatial: tuple[int, ...]) -> Tensor:
    """Apply the adjoint (transpose) of the operator of :func:`conv_apply`.

    Args:
        spec: the operator geometry.
        weight: the layer's weight.
        y: a tensor of the operator's output shape.
        input_spatial: spatial size of the operator's input.

    Returns:
        ``A^T y``, of shape (N, C_in, *input_spatial).
    """
    if spec.transposed:
        return _CONV[spec.ndim](y, weight, stride=spec.stride, padding=[b for b, _ in spec.padding],
                                dilation=spec.dilation, groups=spec.groups)
    padded = tuple(n + b + a for n, (b, a) in zip(input_spatial, spec.padding))
    k = weight.shape[2:]
    # conv_transpose without padding returns (O - 1) s + d (k - 1) + 1 elements; the tail of the
    # padded input that the strided conv never reached gets zeros.
    tail = [padded[i] - ((y.shape[2 + i] - 1) * spec.stride[i] + spec.dilation[i] * (k[i] - 1) + 1)
            for i in range(spec.ndim)]
    full = _CONV_T[spec.ndim](y, weight, stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
    if any(tail):
        full = F.pad(full, [p for e in reversed(tail) for p in (0, e)])
    return _pad_adjoint(spec, full, input_spatial)


def conv_power_iteration(spec: ConvSpec, weight: Tensor, x: Tensor, n_iters: int = 1,
                         eps: float = 1e-12) -> Tensor:
    """Advance the top right singular vector estimate ``x`` of the operator: ``x <- A^T A x / ||.||``.

    Not differentiable (runs under no_grad).

    Args:
        spec: the operator geometry.
        weight: the layer's weight.
        x: current estimate, shape (1, C_in, *spatial) (any batch works: each is iterated).
        n_iters: number of steps (>= 1).
        eps: floor of the norm.

    Returns:
        The new unit-norm estimate, same shape as ``x``.

    Examples:
        >>> conv = torch.nn.Conv1d(1, 1, 1, bias=False)
        >>> x = conv_power_iteration(ConvSpec.from_module(conv), conv.weight, torch.randn(1, 1, 4), 3)
        >>> round(float(x.norm()), 5)
        1.0
    """
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"conv_power_iteration: n_iters must be an integer >= 1, got {n_iters!r}")
    spatial = tuple(x.shape[2:])
    with torch.no_grad():
        w = weight.detach()
        for _ in range(n_iters):
            x = conv_adjoint(spec, w, conv_apply(spec, w, x), spatial)
            x = x / x.flatten(1).norm(dim=1).clamp_min(eps).reshape(-1, *([1] * (x.dim() - 1)))
    return x


def conv_operator_norm(spec: ConvSpec, weight: Tensor, x: Tensor) -> Tensor:
    """Return ``||A x||`` for a unit ``x`` (the power-iteration estimate), differentiable in ``weight``.

    Args:
        spec: the operator geometry.
        weight: the layer's weight.
        x: unit-norm estimate of the top right singular vector, shape (1, C_in, *spatial) (or a
            basis whose first element is that estimate).

    Returns:
        A scalar tensor: a lower estimate of the operator norm that converges to it.
    """
    return conv_apply(spec, weight, x[:1].detach()).norm()


def conv_subspace_iteration(spec: ConvSpec, weight: Tensor, x: Tensor, n_iters: int = 1) -> Tensor:
    """Block power iteration with Rayleigh-Ritz on ``A^T A``: track the top-p right singular subspace.

    A convolution's spectrum is dense near its top, and during training its top singular
    vector can swap with a close one; a single warm-started vector then stays on the old
    direction for many steps and underestimates the norm. Tracking ``p`` vectors and rotating
    them by Rayleigh-Ritz after each call follows such swaps at once. Not differentiable.

    Args:
        spec: the operator geometry.
        weight: the layer's weight.
        x: current basis, shape (p, C_in, *spatial); need not be orthonormal.
        n_iters: block steps (>= 1) before the Rayleigh-Ritz rotation.

    Returns:
        An orthonormal basis of the same shape, sorted so that ``x[0]`` is the top Ritz vector
        (the best estimate of the top right singular vector within the subspace).

    Examples:
        >>> conv = torch.nn.Conv1d(2, 3, 3, padding=1, bias=False)
        >>> spec = ConvSpec.from_module(conv)
        >>> basis = conv_subspace_iteration(spec, conv.weight, torch.randn(4, 2, 8), 5)
        >>> basis.shape
        torch.Size([4, 2, 8])
    """
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"conv_subspace_iteration: n_iters must be an integer >= 1, got {n_iters!r}")
    spatial = tuple(x.shape[2:])
    with torch.no_grad():
        w = weight.detach()
        q = x
        for _ in range(n_iters):
            y = conv_adjoint(spec, w, conv_apply(spec, w, q), spatial)
            q = torch.linalg.qr(y.flatten(1).mT).Q.mT.reshape(x.shape)  # orthonormal rows
        z = conv_apply(spec, w, q).flatten(1)
        _, vecs = torch.linalg.eigh(z @ z.mT)  # ascending Ritz values of A^T A in span(q)
        return (vecs.flip(-1).mT @ q.flatten(1)).reshape(x.shape)
