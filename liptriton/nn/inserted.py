"""The small modules lipschitzify inserts: convex sums, scalings, size-aware adaptive pooling.

Their rules (constants, conversion, export) are in :mod:`liptriton.rules.liptriton_rules`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liptriton.bounds.pooling import adaptive_windows_bound, as_tuple

__all__ = ["ConvexSum", "Scaled", "ScaledAdaptivePool"]


class ConvexSum(nn.Module):
    """``sum_i s_i w_i x_i`` with learnable convex weights ``w = softmax(logits)`` and signs ``s_i``.

    Replaces a residual ``x + f(x)`` (or a difference): if each term is L-Lipschitz, so is the
    result (``sum_i w_i L_i <= max_i L_i``), where the plain sum would be 2L-Lipschitz.

    Args:
        signs: +1.0 or -1.0 per term.
        init: initial weight of the first term (the identity branch of a residual).

    Examples:
        >>> m = ConvexSum((1.0, 1.0))
        >>> m(torch.ones(2), torch.ones(2))
        tensor([1., 1.], grad_fn=<AddBackward0>)
    """

    def __init__(self, signs: tuple[float, ...], init: float = 0.5) -> None:
        super().__init__()
        n = len(signs)
        first = math.log(init * (n - 1) / (1.0 - init)) if n > 1 and 0.0 < init < 1.0 else 0.0
        self.logits = nn.Parameter(torch.tensor([first] + [0.0] * (n - 1)))
        self.register_buffer("signs", torch.tensor(signs, dtype=torch.float32))

    def weights(self) -> Tensor:
        """The convex weights times the signs."""
        return torch.softmax(self.logits, 0) * self.signs

    def convex_weights(self) -> list[float]:
        """The weights ``|w_i|`` of the terms (certify's and export's view: ``sum_i |w_i| L_i``)."""
        return self.weights().detach().double().abs().tolist()

    def forward(self, *xs: Tensor) -> Tensor:
        w = self.weights().to(xs[0].dtype)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class Scaled(nn.Module):
    """``scale * module(x)``: makes a module with a known constant c 1-Lipschitz (scale = 1/c).

    Args:
        module: the wrapped module.
        scale: the constant factor (> 0).

    Examples:
        >>> Scaled(torch.nn.GELU(), 1 / 1.129)(torch.zeros(1))
        tensor([0.])
    """

    def __init__(self, module: nn.Module, scale: float) -> None:
        super().__init__()
        self.module = module
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class ScaledAdaptivePool(nn.Module):
    """Adaptive average or max pooling divided by its norm bound at the input's size.

    The factor depends only on the (static) shapes, so it is a constant under torch.compile.
    Global average pooling over n elements becomes ``sqrt(n) * mean``: exactly 1-Lipschitz.

    Args:
        pool: an ``nn.AdaptiveAvgPoolNd`` or ``nn.AdaptiveMaxPoolNd``.

    Examples:
        >>> ScaledAdaptivePool(torch.nn.AdaptiveAvgPool2d(1))(torch.ones(1, 1, 2, 2)).flatten()
        tensor([2.])
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.average = isinstance(pool, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d))

    def factor(self, sizes: tuple[int, ...]) -> float:
        """The norm bound of the wrapped pooling at spatial size ``sizes``."""
        outs = as_tuple(self.pool.output_size, len(sizes))
        return adaptive_windows_bound(tuple(int(s) for s in sizes), outs, self.average)

    @property
    def nd(self) -> int:
        """The number of pooled (trailing) dimensions."""
        return 1 if isinstance(self.pool, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) else (
            2 if isinstance(self.pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) else 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(x) * (1.0 / self.factor(tuple(x.shape[-self.nd:])))
