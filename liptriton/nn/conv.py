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

import torch
from torch import Tensor, nn
from torch.nn.common_types import _size_1_t, _size_2_t

from liptriton.nn.containers import LipschitzModule, check_coefficient
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

_PAD_MODES = ("zeros", "reflect", "replicate", "circular", "symmetric")
_MATRIX_POWER_ITERS = 5
_PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def symmetric_pad(x: Tensor, pads: list[int] | tuple[int, ...]) -> Tensor:
    """Pad the last dimensions of ``x`` by mirroring, edge element included (numpy's "symmetric").

    Args:
        x: the input, (N, C, *spatial).
        pads: ``F.pad`` order: (last_before, last_after, previous_before, previous_after, ...).

    Returns:
        The padded tensor.

    Example:
        >>> symmetric_pad(torch.tensor([[[1.0, 2.0, 3.0]]]), (1, 2)).tolist()
        [[[1.0, 1.0, 2.0, 3.0, 3.0, 2.0]]]
    """
    for i in range(len(pads) // 2):
        before, after = int(pads[2 * i]), int(pads[2 * i + 1])
        dim = x.dim() - 1 - i
        if before == 0 and after == 0:
            continue
        parts = [x.narrow(dim, 0, before).flip(dim)] if before else []
        parts.append(x)
        if after:
            parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
        x = torch.cat(parts, dim)
    return x


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
    """The weight the layer applies in eval mode, and its bias, detached."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            weight = module.weight.detach().clone()
    finally:
        module.train(was_training)
    bias = None if module.bias is None else module.bias.detach().clone()
    return weight, bias


def plain_torch_layer(module: nn.Module) -> nn.Module:
    """A plain torch layer (no parametrization) computing what ``module`` computes in eval mode.

    ``module`` is an ``nn.Linear``, ``nn.ConvNd`` or ``nn.ConvTransposeNd`` (possibly a
    liptriton subclass with parametrizations); a "symmetric" padding mode gives an
    unconstrained :class:`PadConv1d`/:class:`PadConv2d`.

    Example:
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

    Args: as ``nn.Conv1d``; ``padding_mode`` in "zeros", "reflect", "replicate", "circular",
        "symmetric".

    Example:
        >>> conv = PadConv1d(2, 3, 3, padding=1, padding_mode="symmetric")
        >>> conv(torch.randn(1, 2, 8)).shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_1_t, stride: _size_1_t = 1,
                 padding: str | _size_1_t = 0, dilation: _size_1_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        _check_conv_args(type(self).__name__, in_channels, out_channels, groups, padding_mode)
        nn.Conv1d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           "zeros" if padding_mode == "symmetric" else padding_mode)
        self._setup_padding(padding_mode)


class PadConv2d(_SymmetricPadMixin, nn.Conv2d):
    """``nn.Conv2d`` with one more ``padding_mode``: ``"symmetric"`` (mirror, edge included).

    Args: as ``nn.Conv2d``; ``padding_mode`` in "zeros", "reflect", "replicate", "circular",
        "symmetric".

    Example:
        >>> conv = PadConv2d(2, 3, 3, padding=2, padding_mode="symmetric")
        >>> conv(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 3, 10, 10])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: str | _size_2_t = 0, dilation: _size_2_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros") -> None:
        _check_conv_args(type(self).__name__, in_channels, out_channels, groups, padding_mode)
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           "zeros" if padding_mode == "symmetric" else padding_mode)
        self._setup_padding(padding_mode)


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
    # matrix-vector products, and they keep sigma's estimate above sigma / sqrt(3) after a large
    # optimizer step (one Adam step at lr 1e-2, the usage example's, took an orthogonal 256x1568
    # weight's top singular value from 1 to 4.9; with 1 step the estimate lagged, Björck got
    # singular values > sqrt(3) and diverged to NaN). The convolution-operator state keeps 1.
    for p in layer.parametrizations.weight:
        if hasattr(p, "state"):
            p.state.n_iters = _MATRIX_POWER_ITERS


class _SpectralConvMixin(LipschitzModule):
    def vanilla_export(self) -> nn.Module:
        """A plain torch convolution with the constrained weight baked in (eval-mode weight)."""
        return plain_torch_layer(self)


class SpectralConv1d(_SpectralConvMixin, PadConv1d):
    """``k_coef_lip``-Lipschitz Conv1d: orthogonal (Björck) kernel normalized by its operator norm.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode: as :class:`PadConv1d` (any dilation and groups are supported).
        k_coef_lip: the Lipschitz constant (reached, not only bounded).
        eps_spectral: accepted for compatibility (> 0); see the module docstring.
        eps_bjorck: accepted for compatibility (> 0); None: spectral normalization only.

    Example:
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
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode: as :class:`PadConv2d` (any dilation and groups are supported).
        k_coef_lip: the Lipschitz constant (reached, not only bounded).
        eps_spectral: accepted for compatibility (> 0); see the module docstring.
        eps_bjorck: accepted for compatibility (> 0); None: spectral normalization only.

    Example:
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
    one input element (``kh * kw`` at stride 1, fewer at larger strides, which are supported).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as
            :class:`PadConv2d`.
        padding_mode: "zeros" or "circular" (modes that copy input elements break the bound).
        k_coef_lip: the Lipschitz constant bound.

    Example:
        >>> conv = FrobeniusConv2d(3, 1, 3, padding=1)
        >>> conv(torch.randn(1, 3, 8, 8)).shape
        torch.Size([1, 1, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: str | _size_2_t = 0, dilation: _size_2_t = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", k_coef_lip: float = 1.0) -> None:
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"FrobeniusConv2d: padding_mode must be 'zeros' or 'circular', got {padding_mode!r}: "
                             "padding that copies input elements (reflect, replicate, symmetric) breaks the "
                             "Frobenius bound (measured 1.08 k with reflect); use SpectralConv2d")
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
        in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
            dilation, padding_mode, device, dtype: as ``nn.ConvTranspose2d`` (padding_mode "zeros").
        k_coef_lip: the Lipschitz constant (reached).
        eps_spectral: accepted for compatibility (> 0); see the module docstring.
        eps_bjorck: accepted for compatibility (> 0); None: spectral normalization only.

    Example:
        >>> up = SpectralConvTranspose2d(4, 2, 2, stride=2)
        >>> up(torch.randn(1, 4, 8, 8)).shape
        torch.Size([1, 2, 16, 16])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: _size_2_t, stride: _size_2_t = 1,
                 padding: _size_2_t = 0, output_padding: _size_2_t = 0, groups: int = 1, bias: bool = True,
                 dilation: _size_2_t = 1, padding_mode: str = "zeros", device=None, dtype=None,
                 k_coef_lip: float = 1.0, eps_spectral: float = 1e-3, eps_bjorck: float | None = 1e-3) -> None:
        _check_conv_args(type(self).__name__, in_channels, out_channels, groups, padding_mode, ("zeros",))
        if output_padding is None:
            output_padding = 0
        nn.ConvTranspose2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, output_padding,
                                    groups, bias, dilation, padding_mode, device, dtype)
        LipschitzModule.__init__(self, k_coef_lip)
        _orthogonal_init(self)
        _constrain_spectral(self, self.k_coef_lip, eps_spectral, eps_bjorck)
