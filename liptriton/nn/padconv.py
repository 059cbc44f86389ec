"""Convolutions with one more padding mode ("symmetric") and the export of constrained layers to
plain torch layers: PadConv1d, PadConv2d, symmetric_pad, plain_torch_layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.common_types import _size_1_t, _size_2_t

from liptriton.functional.padding import symmetric_pad

__all__ = ["PadConv1d", "PadConv2d", "plain_torch_layer", "symmetric_pad"]

_PAD_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")
_PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def check_geometry(owner: str, nd: int, kernel_size, stride, padding, dilation,
                   transposed: bool = False) -> None:
    """Refuse, at construction, a geometry torch would refuse only at the first forward.

    Kernel sizes, strides and dilations are integers >= 1; paddings integers >= 0, or "same" /
    "valid" (not for transposed convolutions).
    """
    tup = torch.nn.modules.utils._ntuple(nd)
    for arg, value, least in (("kernel_size", kernel_size, 1), ("stride", stride, 1),
                              ("dilation", dilation, 1), ("padding", padding, 0)):
        if arg == "padding" and isinstance(value, str):
            if transposed or value not in ("same", "valid"):
                expected = "integers" if transposed else "integers, 'same' or 'valid'"
                raise ValueError(f"{owner}: padding must be {expected}, got {value!r}")
            if value == "same" and any(v != 1 for v in tup(stride)):
                raise ValueError(f"{owner}: padding='same' needs stride 1 (torch's rule), got stride={stride!r}")
            continue
        values = tup(value)
        bad = any(isinstance(v, bool) or not isinstance(v, int) or v < least for v in values)
        if len(values) != nd or bad:
            raise ValueError(f"{owner}: {arg} must be {nd} integer(s) >= {least}, got {value!r}")


def _check_conv_args(owner: str, in_channels: int, out_channels: int, groups: int, padding_mode: str,
                     allowed_modes: tuple[str, ...] = _PAD_MODES) -> None:
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{owner}: groups must be an integer >= 1, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"{owner}: groups={groups} must divide in_channels={in_channels} and "
                         f"out_channels={out_channels}")
    if padding_mode not in allowed_modes:
        raise ValueError(f"{owner}: padding_mode must be one of {allowed_modes}, got {padding_mode!r}")


def _constrained_tensors(module: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The weight the layer applies in eval mode, and its bias, detached (the one bake path)."""
    from torch.nn.utils import parametrize

    from liptriton._bake import baked_tensors

    values = baked_tensors(module) if parametrize.is_parametrized(module) else {}
    weight = values.get("weight", module.weight.detach().clone())
    bias = values.get("bias", None if module.bias is None else module.bias.detach().clone())
    return weight, bias


def plain_torch_layer(module: nn.Module) -> nn.Module:
    """A plain torch layer (no parametrization) computing what ``module`` computes in eval mode.

    ``module`` is an ``nn.Linear``, ``nn.ConvNd`` or ``nn.ConvTransposeNd`` (possibly a
    liptriton subclass with parametrizations); a "symmetric" padding mode gives an
    unconstrained :class:`PadConv1d`/:class:`PadConv2d`.

    Examples:
        >>> import liptriton
        >>> type(plain_torch_layer(liptriton.SpectralConv2d(2, 2, 3))).__name__
        'Conv2d'
    """
    base = next((t for t in type(module).__mro__ if t in _PLAIN), None)
    if base is None:
        raise ValueError(f"plain_torch_layer: expected an nn.Linear, nn.ConvNd or nn.ConvTransposeNd, got "
                         f"{type(module).__name__}")
    weight, bias = _constrained_tensors(module)
    factory = {"device": weight.device, "dtype": weight.dtype}
    if base is nn.Linear:
        plain = nn.Linear(module.in_features, module.out_features, bias=bias is not None, **factory)
    else:
        kwargs = {"stride": module.stride, "padding": module.padding, "dilation": module.dilation, "groups": module.groups,
                      "bias": bias is not None, "padding_mode": module.padding_mode}
        if module.transposed:
            kwargs["output_padding"] = module.output_padding
        if module.padding_mode == "symmetric":
            base = PadConv1d if base is nn.Conv1d else PadConv2d
            factory = {}
        plain = base(module.in_channels, module.out_channels, module.kernel_size, **kwargs, **factory)
        plain = plain.to(weight.device, weight.dtype)
    with torch.no_grad():
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    return plain


class _SymmetricPadMixin:
    """Adds padding_mode "symmetric" to a torch convolution (mirror padding, edge included)."""

    def _setup_padding(self, padding_mode: str) -> None:
        self.padding_mode = padding_mode  # torch validated "zeros"; "symmetric" is handled here

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.padding_mode == "symmetric":
            x = symmetric_pad(input, self._reversed_padding_repeated_twice)
            conv = torch.nn.functional.conv1d if isinstance(self, nn.Conv1d) else torch.nn.functional.conv2d
            return conv(x, weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)

    def vanilla_export(self) -> nn.Module:
        """A plain torch convolution (:class:`PadConv2d` for "symmetric") with the current weight."""
        return plain_torch_layer(self)


class PadConv1d(_SymmetricPadMixin, nn.Conv1d):
    """``nn.Conv1d`` with one more ``padding_mode``: ``"symmetric"`` (mirror, edge included).

    Its arguments are those of ``nn.Conv1d``, with ``padding_mode`` in "zeros", "reflect",
    "replicate", "circular" or "symmetric".

    Examples:
        >>> conv = PadConv1d(2, 3, 3, padding=1, padding_mode="symmetric")
        >>> conv(torch.randn(1, 2, 8)).shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_1_t, stride: _size_1_t = 1,
                 padding: str | _size_1_t = 0, dilation: _size_1_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        _check_conv_args(type(self).__name__, in_channels, out_channels, groups, padding_mode)
        check_geometry(type(self).__name__, 1, kernel_size, stride, padding, dilation)
        nn.Conv1d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           "zeros" if padding_mode == "symmetric" else padding_mode)
        self._setup_padding(padding_mode)


class PadConv2d(_SymmetricPadMixin, nn.Conv2d):
    """``nn.Conv2d`` with one more ``padding_mode``: ``"symmetric"`` (mirror, edge included).

    Its arguments are those of ``nn.Conv2d``, with ``padding_mode`` in "zeros", "reflect",
    "replicate", "circular" or "symmetric".

    Examples:
        >>> conv = PadConv2d(2, 3, 3, padding=2, padding_mode="symmetric")
        >>> conv(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 3, 10, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: str | _size_2_t = 0, dilation: _size_2_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        _check_conv_args(type(self).__name__, in_channels, out_channels, groups, padding_mode)
        check_geometry(type(self).__name__, 2, kernel_size, stride, padding, dilation)
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           "zeros" if padding_mode == "symmetric" else padding_mode)
        self._setup_padding(padding_mode)
