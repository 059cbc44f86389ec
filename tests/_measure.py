"""Independent measurements of a layer's true operator norm (no liptriton code used).

Dense weights: float64 SVD. Convolutions: a plain torch layer with the same geometry and the
constrained weight, in float64, power iteration on ``A^T A`` with the adjoint from autograd.
"""

from __future__ import annotations

import torch
from torch import nn

_PLAIN = {
    nn.Conv1d: nn.Conv1d, nn.Conv2d: nn.Conv2d, nn.Conv3d: nn.Conv3d,
    nn.ConvTranspose1d: nn.ConvTranspose1d, nn.ConvTranspose2d: nn.ConvTranspose2d,
    nn.ConvTranspose3d: nn.ConvTranspose3d,
}


def plain_conv(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A plain float64 conv layer with ``module``'s geometry, weight ``weight`` and no bias."""
    base = next(t for t in type(module).__mro__ if t in _PLAIN)
    kwargs = dict(stride=module.stride, padding=module.padding, dilation=module.dilation, groups=module.groups,
                  bias=False, padding_mode=module.padding_mode)
    if module.transposed:
        kwargs["output_padding"] = module.output_padding
    plain = _PLAIN[base](module.in_channels, module.out_channels, module.kernel_size, **kwargs).double()
    with torch.no_grad():
        plain.weight.copy_(weight.detach().double())
    return plain


class OperatorNorm:
    """Warm-started float64 power iteration on a linear map ``f`` (adjoint by autograd).

    The first call runs ``first`` steps (>= 200), later calls ``then`` more from the last vector.
    """

    def __init__(self, input_shape: tuple[int, ...], first: int = 300, then: int = 60) -> None:
        self.x = torch.randn(1, *input_shape, dtype=torch.float64)
        self.first, self.then, self.calls = first, then, 0

    def __call__(self, f) -> float:
        steps = self.first if self.calls == 0 else self.then
        self.calls += 1
        x = self.x / self.x.norm()
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            y = f(x)
            (g,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
            x = g / g.norm()
        self.x = x.detach()
        with torch.no_grad():
            return float(f(self.x).norm())


def dense_singular_values(weight: torch.Tensor) -> torch.Tensor:
    """Singular values of a 2-D weight, float64."""
    return torch.linalg.svdvals(weight.detach().double())


def exact_conv_norm(module: nn.Module, weight: torch.Tensor, input_size: tuple[int, ...]) -> float:
    """The exact operator norm of ``module``'s convolution with ``weight`` at ``input_size``: the
    float64 SVD of the dense matrix whose columns are the plain layer's outputs for unit inputs
    (small operators only)."""
    plain = plain_conv(module, weight)
    dim = module.in_channels * int(torch.tensor(input_size).prod())
    eye = torch.eye(dim, dtype=torch.float64).reshape(dim, module.in_channels, *input_size)
    with torch.no_grad():
        a = plain(eye).flatten(1)
    return float(torch.linalg.svdvals(a).max())


def applied_norm(layer: nn.Module, size: tuple[int, ...] | None) -> float:
    """The true norm of the weight ``layer`` applies now (training mode: the next forward's):
    float64 SVD for a dense weight (``size`` None), the exact operator norm at ``size`` for a conv."""
    w = layer.weight
    return float(dense_singular_values(w).max()) if size is None else exact_conv_norm(layer, w, size)


def hostile_ratios(layer: nn.Module, make_x, size: tuple[int, ...] | None, k: float, steps: int,
                   lr: float = 1e-2, initial: bool = False) -> list[float]:
    """Adam pushing the output norm up (``-(layer(x) ** 2).mean()``, a fresh x per step); the
    measured norm / k after every step (and before the first, with ``initial``)."""
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    ratios = [applied_norm(layer, size) / k] if initial else []
    for _ in range(steps):
        loss = -(layer(make_x()) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ratios.append(applied_norm(layer, size) / k)
    return ratios
