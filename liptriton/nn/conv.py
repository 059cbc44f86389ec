"""Convolution layers of deel-torchlip, drop-in: PadConv1d/2d, SpectralConv1d/2d, FrobeniusConv2d,
SpectralConvTranspose2d.

Each is the torch layer (``isinstance(layer, nn.Conv2d)`` holds) plus a liptriton
parametrization on ``weight``. Spectral layers use :func:`liptriton.bjorck`: an orthogonal
reshaped kernel, then division by the norm of the layer's own convolution operator (stride,
padding and padding mode, dilation, groups, at the input size seen in the first forward), so
the layer is ``k_coef_lip``-Lipschitz and reaches it: no coercive factor (deel-torchlip's
leaves a 32->32 3x3 conv at about 0.65 k and a 1-D conv at ``k / sqrt(kernel_size)``).

``eps_spectral`` / ``eps_bjorck`` are accepted for compatibility. They are stopping tolerances
in deel-torchlip; here iteration counts are constants (so the layers compile without graph
breaks): warm-started power iteration (5 steps per training forward on the weight matrix, one
block step on the convolution operator, 200 at the first evaluation), and 15 Björck steps. A positive value is accepted and does not change the counts.
``eps_bjorck=None`` keeps its meaning, no orthogonalization: spectral normalization followed by
a single order-1 Björck step, whose only role is to make the bound exact (the step maps
[0, sqrt(3)] into [0, 1], so a power-iteration underestimate of sigma cannot push the layer
above ``k``; pure spectral normalization exceeded k by 0.8% after 10 Adam steps in our tests).
"""

from __future__ import annotations

import torch  # noqa: F401  (docstring examples)
from torch import nn
from torch.nn.common_types import _size_1_t, _size_2_t

from liptriton.nn.containers import LipschitzModule, check_coefficient
from liptriton.nn.padconv import (
    PadConv1d,
    PadConv2d,
    _check_conv_args,
    check_geometry,
    plain_torch_layer,
    symmetric_pad,
)
from liptriton.parametrizations import bjorck, frobenius

__all__ = [
    "FrobeniusConv2d",
    "PadConv1d",
    "PadConv2d",
    "SpectralConv1d",
    "SpectralConv2d",
    "SpectralConvTranspose2d",
    "plain_torch_layer",
    "symmetric_pad",
]

_MATRIX_POWER_ITERS = 5


def _orthogonal_init(layer: nn.Module) -> None:
    nn.init.orthogonal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _constrain_spectral(layer: nn.Module, k: float, eps_spectral: float, eps_bjorck: float | None) -> None:
    owner = type(layer).__name__
    check_coefficient(owner, "eps_spectral", eps_spectral)
    if eps_bjorck is not None:
        check_coefficient(owner, "eps_bjorck", eps_bjorck)
    # eps_bjorck=None: no orthogonalization, one order-1 step only, which makes the bound exact
    # (it maps [0, sqrt(3)] into [0, 1]: a power-iteration underestimate of sigma cannot exceed k)
    bjorck(layer, "weight", k=k, n_iters=15 if eps_bjorck is not None else 1)
    # More warm-started power steps on the (reshaped) weight matrix than the default 1: cheap
    # matrix-vector products that keep sigma's estimate tight after a large optimizer step (one Adam
    # step at lr 1e-2, the usage example's, took an orthogonal 256x1568 weight's top singular value
    # from 1 to 4.9; with 1 step Björck then diverged, before the foundation floored its
    # pre-normalization by a guaranteed bound; a loose floor would leave the weight far from
    # orthogonal after 15 steps). The convolution-operator state keeps 1 block step.
    layer.parametrizations.weight[0].set_power_iters(matrix=_MATRIX_POWER_ITERS)


def _check_output_padding(owner: str, output_padding: _size_2_t, stride: _size_2_t,
                          dilation: _size_2_t) -> None:
    """torch refuses it only at the first forward; deel-torchlip at construction."""
    pair = nn.modules.utils._pair
    for op, s, d in zip(pair(output_padding), pair(stride), pair(dilation)):
        if op < 0 or (op >= s and op >= d):
            raise ValueError(f"{owner}: output_padding must be >= 0 and smaller than the stride or the "
                             f"dilation, got output_padding={output_padding!r}, stride={stride!r}, "
                             f"dilation={dilation!r}")


class _SpectralConvMixin(LipschitzModule):
    def vanilla_export(self) -> nn.Module:
        """A plain torch convolution with the constrained weight baked in (eval-mode weight)."""
        return plain_torch_layer(self)


class SpectralConv1d(_SpectralConvMixin, PadConv1d):
    """``k_coef_lip``-Lipschitz Conv1d: orthogonal (Björck) kernel normalized by its operator norm.

    Args:
        in_channels: as :class:`PadConv1d` (any dilation and groups are supported).
        out_channels: as :class:`PadConv1d` (any dilation and groups are supported).
        kernel_size: as :class:`PadConv1d` (any dilation and groups are supported).
        stride: as :class:`PadConv1d` (any dilation and groups are supported).
        padding: as :class:`PadConv1d` (any dilation and groups are supported).
        dilation: as :class:`PadConv1d` (any dilation and groups are supported).
        groups: as :class:`PadConv1d` (any dilation and groups are supported).
        bias: as :class:`PadConv1d` (any dilation and groups are supported).
        padding_mode: as :class:`PadConv1d` (any dilation and groups are supported).
        k_coef_lip: the Lipschitz constant (reached, not only bounded).
        eps_spectral: accepted for compatibility (> 0); see the module docstring.
        eps_bjorck: accepted for compatibility (> 0); None: spectral normalization only.

    Examples:
        >>> conv = SpectralConv1d(2, 4, 3, padding=1)
        >>> conv(torch.randn(1, 2, 16)).shape
        torch.Size([1, 4, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_1_t, stride: _size_1_t = 1,
                 padding: str | _size_1_t = 0, dilation: _size_1_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", k_coef_lip: float = 1.0, eps_spectral: float = 1e-3,
                 eps_bjorck: float | None = 1e-3) -> None:
        PadConv1d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           padding_mode)
        LipschitzModule.__init__(self, k_coef_lip)
        _orthogonal_init(self)
        _constrain_spectral(self, self.k_coef_lip, eps_spectral, eps_bjorck)


class SpectralConv2d(_SpectralConvMixin, PadConv2d):
    """``k_coef_lip``-Lipschitz Conv2d: orthogonal (Björck) kernel normalized by its operator norm.

    Args:
        in_channels: as :class:`PadConv2d` (any dilation and groups are supported).
        out_channels: as :class:`PadConv2d` (any dilation and groups are supported).
        kernel_size: as :class:`PadConv2d` (any dilation and groups are supported).
        stride: as :class:`PadConv2d` (any dilation and groups are supported).
        padding: as :class:`PadConv2d` (any dilation and groups are supported).
        dilation: as :class:`PadConv2d` (any dilation and groups are supported).
        groups: as :class:`PadConv2d` (any dilation and groups are supported).
        bias: as :class:`PadConv2d` (any dilation and groups are supported).
        padding_mode: as :class:`PadConv2d` (any dilation and groups are supported).
        k_coef_lip: the Lipschitz constant (reached, not only bounded).
        eps_spectral: accepted for compatibility (> 0); see the module docstring.
        eps_bjorck: accepted for compatibility (> 0); None: spectral normalization only.

    Examples:
        >>> conv = SpectralConv2d(3, 8, (3, 3), padding=1)
        >>> conv(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: str | _size_2_t = 0, dilation: _size_2_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", k_coef_lip: float = 1.0, eps_spectral: float = 1e-3,
                 eps_bjorck: float | None = 1e-3) -> None:
        PadConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           padding_mode)
        LipschitzModule.__init__(self, k_coef_lip)
        _orthogonal_init(self)
        _constrain_spectral(self, self.k_coef_lip, eps_spectral, eps_bjorck)


class FrobeniusConv2d(_SpectralConvMixin, PadConv2d):
    """``k_coef_lip``-Lipschitz Conv2d by Frobenius normalization (a bound: the layer may stay below k).

    ``W * k / (||W||_F sqrt(overlap))``, ``overlap`` the largest number of kernel taps that read
    one input element (``kh * kw`` at stride 1, fewer at larger strides, which are supported;
    more with a padding mode that copies input elements: reflect, replicate, circular and
    symmetric padding count the reads of the copies, so the bound stays true).

    Args:
        in_channels: as :class:`PadConv2d`.
        out_channels: as :class:`PadConv2d`.
        kernel_size: as :class:`PadConv2d`.
        stride: as :class:`PadConv2d`.
        padding: as :class:`PadConv2d`.
        dilation: as :class:`PadConv2d`.
        groups: as :class:`PadConv2d`.
        bias: as :class:`PadConv2d`.
        padding_mode: "zeros", "reflect", "replicate", "circular" or "symmetric".
        k_coef_lip: the Lipschitz constant bound.

    Examples:
        >>> conv = FrobeniusConv2d(3, 1, 3, padding=1)
        >>> conv(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: str | _size_2_t = 0, dilation: _size_2_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", k_coef_lip: float = 1.0) -> None:
        PadConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           padding_mode)
        LipschitzModule.__init__(self, k_coef_lip)
        _orthogonal_init(self)
        frobenius(self, "weight", k=self.k_coef_lip, disjoint_neurons=False)


class SpectralConvTranspose2d(_SpectralConvMixin, nn.ConvTranspose2d):
    """``k_coef_lip``-Lipschitz ConvTranspose2d: orthogonal kernel normalized by its operator norm.

    The operator norm is that of the transposed convolution itself (stride, padding,
    output_padding, dilation and groups included), so the layer reaches ``k``; dilation and
    output_padding, which deel-torchlip refuses, are supported.

    Args:
        in_channels: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        out_channels: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        kernel_size: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        stride: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        padding: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        output_padding: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        groups: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        bias: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        dilation: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        padding_mode: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        device: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        dtype: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        k_coef_lip: the Lipschitz constant (reached).
        eps_spectral: accepted for compatibility (> 0); see the module docstring.
        eps_bjorck: accepted for compatibility (> 0); None: spectral normalization only.

    Examples:
        >>> up = SpectralConvTranspose2d(4, 2, 2, stride=2)
        >>> up(torch.randn(1, 4, 8, 8)).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: _size_2_t = 0, output_padding: _size_2_t = 0, groups: int = 1, bias: bool = True,
                 dilation: _size_2_t = 1, padding_mode: str = "zeros", device=None, dtype=None,
                 k_coef_lip: float = 1.0, eps_spectral: float = 1e-3, eps_bjorck: float | None = 1e-3) -> None:
        _check_conv_args(type(self).__name__, in_channels, out_channels, groups, padding_mode, ("zeros",))
        check_geometry(type(self).__name__, 2, kernel_size, stride, padding, dilation, transposed=True)
        if output_padding is None:
            output_padding = 0
        _check_output_padding(type(self).__name__, output_padding, stride, dilation)
        nn.ConvTranspose2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, output_padding,
                                    groups, bias, dilation, padding_mode, device, dtype)
        LipschitzModule.__init__(self, k_coef_lip)
        _orthogonal_init(self)
        _constrain_spectral(self, self.k_coef_lip, eps_spectral, eps_bjorck)
