"""Lipschitz pooling of deel-torchlip, drop-in: scaled average / l2-norm pooling and invertible
(pixel-shuffle) down/up-sampling.

Same outputs as deel-torchlip at ``k_coef_lip=1``, and the bound holds for every argument
deel-torchlip accepts: with ``ceil_mode=True`` a partial window of ``m < kh kw`` elements is
divided as a full one (deel-torchlip divides by ``m``, which makes its scaled pooling
``sqrt(kh kw / m)``-Lipschitz), and a ``divisor_override`` below ``kh kw`` acts as ``kh kw``
(deel-torchlip's is ``kh kw / d``-Lipschitz). Overlapping windows, padding and adaptive output
sizes other than (1, 1) are refused, as deel-torchlip does.
InvertibleDownSampling/UpSampling multiply by ``k_coef_lip`` (deel-torchlip ignores it).
"""

from __future__ import annotations

import math

import torch  # noqa: F401  (docstring examples)
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.common_types import _size_2_t
from torch.nn.modules.utils import _pair

from liptriton.nn.containers import LipschitzModule

__all__ = [
    "InvertibleDownSampling",
    "InvertibleUpSampling",
    "ScaledAdaptativeL2NormPool2d",
    "ScaledAdaptiveAvgPool2d",
    "ScaledAvgPool2d",
    "ScaledL2NormPool2d",
]


def _check_window(owner: str, kernel_size, stride) -> tuple[int, int]:
    ks = _pair(kernel_size)
    if len(ks) != 2 or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"{owner}: kernel_size must be an int or a pair of ints >= 1, got {kernel_size!r}")
    if stride is not None and tuple(_pair(stride)) != tuple(ks):
        raise ValueError(f"{owner}: stride must be None or equal to kernel_size={kernel_size!r} (non-overlapping "
                         f"windows), got {stride!r}")
    return ks


def _check_unit_output(owner: str, output_size) -> None:
    if tuple(_pair(output_size)) != (1, 1):
        raise ValueError(f"{owner}: output_size must be (1, 1) (or 1) for a Lipschitz bound, got {output_size!r}")


class _PoolingLayer(LipschitzModule):
    """A liptriton pooling layer: its factor is part of its forward; it is its own plain form."""

    def vanilla_export(self) -> nn.Module:
        """Return the module itself: it holds no parametrization (the scale is part of its forward)."""
        return self


class ScaledAvgPool2d(_PoolingLayer, nn.AvgPool2d):
    """Average pooling times ``sqrt(kh kw) * k_coef_lip``: exactly ``k_coef_lip``-Lipschitz.

    Args:
        kernel_size: the window.
        stride: None or equal to ``kernel_size``.
        padding: must be 0.
        ceil_mode: keep the partial windows at the bottom and right edges (each divided as a
            full window, so the bound holds).
        count_include_pad: as ``nn.AvgPool2d`` (no effect without padding).
        divisor_override: None, or a divisor; one below ``kh kw`` acts as ``kh kw``.
        k_coef_lip: the Lipschitz constant.

    Examples:
        >>> pool = ScaledAvgPool2d(2)
        >>> pool(torch.ones(1, 1, 4, 4)).tolist()
        [[[[2.0, 2.0], [2.0, 2.0]]]]
    """

    def __init__(self, kernel_size: _size_2_t, stride: _size_2_t | None = None, padding: _size_2_t = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None,
                 k_coef_lip: float = 1.0) -> None:
        owner = type(self).__name__
        ks = _check_window(owner, kernel_size, stride)
        if tuple(_pair(padding)) != (0, 0):
            raise ValueError(f"{owner}: padding must be 0, got {padding!r}")
        if divisor_override is not None and (isinstance(divisor_override, bool) or divisor_override < 1):
            raise ValueError(f"{owner}: divisor_override must be None or an integer >= 1, "
                             f"got {divisor_override!r}")
        nn.AvgPool2d.__init__(self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        LipschitzModule.__init__(self, k_coef_lip)
        self.scaling_factor = math.sqrt(ks[0] * ks[1])
        # every window (partial ones of ceil_mode included) divided by at least kh kw: each output is
        # sum / divisor * sqrt(kh kw), of norm <= 1 on disjoint windows
        self._divisor = max(divisor_override or 0, ks[0] * ks[1])

    @property
    def scalingFactor(self) -> float:  # noqa: N802  (deel-torchlip's name)
        """deel-torchlip's name of ``scaling_factor``."""
        return self.scaling_factor

    def forward(self, input: Tensor) -> Tensor:
        pooled = F.avg_pool2d(input, self.kernel_size, self.stride, 0, self.ceil_mode, self.count_include_pad,
                              self._divisor)
        return pooled * (self.k_coef_lip * self.scaling_factor)


class ScaledAdaptiveAvgPool2d(_PoolingLayer, nn.AdaptiveAvgPool2d):
    """Global average pooling times ``sqrt(H W) * k_coef_lip``: exactly ``k_coef_lip``-Lipschitz.

    Args:
        output_size: must be (1, 1) (or 1).
        k_coef_lip: the Lipschitz constant.

    Examples:
        >>> ScaledAdaptiveAvgPool2d((1, 1))(torch.ones(1, 1, 4, 4)).flatten().tolist()
        [4.0]
    """

    def __init__(self, output_size: _size_2_t, k_coef_lip: float = 1.0) -> None:
        _check_unit_output(type(self).__name__, output_size)
        nn.AdaptiveAvgPool2d.__init__(self, output_size)
        LipschitzModule.__init__(self, k_coef_lip)

    def forward(self, input: Tensor) -> Tensor:
        coeff = math.sqrt(input.shape[-2] * input.shape[-1]) * self.k_coef_lip
        return nn.AdaptiveAvgPool2d.forward(self, input) * coeff


class ScaledL2NormPool2d(_PoolingLayer, nn.LPPool2d):
    """l2-norm pooling ``sqrt(sum_window x^2) * k_coef_lip`` (norm preserving, gradient norm 1 a.e.).

    Args:
        kernel_size: the window.
        stride: None or equal to ``kernel_size``.
        ceil_mode: keep the partial windows at the bottom and right edges (their exact l2 norm).
        k_coef_lip: the Lipschitz constant.

    Examples:
        >>> ScaledL2NormPool2d(2)(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [2.0]
    """

    def __init__(self, kernel_size: _size_2_t, stride: _size_2_t | None = None, ceil_mode: bool = False,
                 k_coef_lip: float = 1.0) -> None:
        _check_window(type(self).__name__, kernel_size, stride)
        nn.LPPool2d.__init__(self, 2, kernel_size, stride, ceil_mode)
        LipschitzModule.__init__(self, k_coef_lip)

    def forward(self, input: Tensor) -> Tensor:
        if not self.ceil_mode:
            return nn.LPPool2d.forward(self, input) * self.k_coef_lip
        # torch's lp_pool2d divides a partial window by its size m, then multiplies by kh kw: its
        # output would be sqrt(kh kw / m) times the window's norm; here every window's exact norm
        kh, kw = _pair(self.kernel_size)
        sums = F.avg_pool2d(input.square(), (kh, kw), self.stride, 0, True, True, kh * kw) * (kh * kw)
        return sums.relu().sqrt() * self.k_coef_lip

    def vanilla_export(self) -> nn.Module:
        """A plain ``nn.LPPool2d`` at ``k_coef_lip=1`` without ``ceil_mode``, else the module itself."""
        if self.k_coef_lip == 1.0 and not self.ceil_mode:
            return nn.LPPool2d(2, self.kernel_size, self.stride, self.ceil_mode)
        return self


class ScaledAdaptativeL2NormPool2d(_PoolingLayer, nn.Module):
    """Global l2-norm pooling ``sqrt(sum_{h,w} x^2) * k_coef_lip`` (deel-torchlip's spelling).

    Args:
        output_size: must be (1, 1) (or 1).
        k_coef_lip: the Lipschitz constant.

    Shape:
        (N, C, H, W) -> (N, C, 1, 1).

    Examples:
        >>> ScaledAdaptativeL2NormPool2d()(torch.ones(1, 1, 2, 2)).flatten().tolist()
        [2.0]
    """

    def __init__(self, output_size: _size_2_t = (1, 1), k_coef_lip: float = 1.0) -> None:
        _check_unit_output(type(self).__name__, output_size)
        nn.Module.__init__(self)
        LipschitzModule.__init__(self, k_coef_lip)
        self.output_size = output_size

    def forward(self, input: Tensor) -> Tensor:
        return F.lp_pool2d(input, 2, input.shape[-2:]) * self.k_coef_lip


class InvertibleDownSampling(_PoolingLayer, nn.PixelUnshuffle):
    """Pixel unshuffle (an orthogonal permutation) times ``k_coef_lip``: (C, H, W) -> (C s^2, H/s, W/s).

    Args:
        kernel_size: the factor ``s`` (>= 1); H and W must be multiples of it.
        k_coef_lip: the Lipschitz constant.

    Examples:
        >>> InvertibleDownSampling(2)(torch.randn(1, 3, 4, 4)).shape
        torch.Size([1, 12, 2, 2])
    """

    def __init__(self, kernel_size: int, k_coef_lip: float = 1.0) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"InvertibleDownSampling: kernel_size must be an int >= 1, got {kernel_size!r}")
        nn.PixelUnshuffle.__init__(self, kernel_size)
        LipschitzModule.__init__(self, k_coef_lip)

    def forward(self, input: Tensor) -> Tensor:
        s = self.downscale_factor
        if input.shape[-1] % s or input.shape[-2] % s:
            raise ValueError(f"InvertibleDownSampling: input height and width must be multiples of kernel_size={s}, "
                             f"got {tuple(input.shape[-2:])}")
        out = F.pixel_unshuffle(input, s)
        return out if self.k_coef_lip == 1.0 else out * self.k_coef_lip

    def vanilla_export(self) -> nn.Module:
        """``nn.PixelUnshuffle`` at ``k_coef_lip=1``, else the module itself."""
        return nn.PixelUnshuffle(self.downscale_factor) if self.k_coef_lip == 1.0 else self


class InvertibleUpSampling(_PoolingLayer, nn.PixelShuffle):
    """Pixel shuffle (an orthogonal permutation) times ``k_coef_lip``: (C s^2, H, W) -> (C, H s, W s).

    Args:
        kernel_size: the factor ``s`` (>= 1); the channels must be a multiple of ``s^2``.
        k_coef_lip: the Lipschitz constant.

    Examples:
        >>> InvertibleUpSampling(2)(torch.randn(1, 12, 2, 2)).shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(self, kernel_size: int, k_coef_lip: float = 1.0) -> None:
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"InvertibleUpSampling: kernel_size must be an int >= 1, got {kernel_size!r}")
        nn.PixelShuffle.__init__(self, kernel_size)
        LipschitzModule.__init__(self, k_coef_lip)

    def forward(self, input: Tensor) -> Tensor:
        s = self.upscale_factor
        if input.shape[-3] % (s * s):
            raise ValueError(f"InvertibleUpSampling: input channels must be a multiple of kernel_size**2={s * s}, "
                             f"got {input.shape[-3]}")
        out = F.pixel_shuffle(input, s)
        return out if self.k_coef_lip == 1.0 else out * self.k_coef_lip

    def vanilla_export(self) -> nn.Module:
        """``nn.PixelShuffle`` at ``k_coef_lip=1``, else the module itself."""
        return nn.PixelShuffle(self.upscale_factor) if self.k_coef_lip == 1.0 else self

