"""Spectral normalization: ``W * k / ||W||``, with the norm of the operator the layer applies."""

from __future__ import annotations

from torch import Tensor, nn

from liptriton.parametrizations._base import (
    ConvNormState,
    LipschitzParametrization,
    MatrixNormState,
    WeightLayout,
    check_iters,
    check_positive,
    register,
)

__all__ = ["Spectral", "spectral"]


class Spectral(LipschitzParametrization):
    """Divide the weight by its spectral norm and scale by ``k``.

    Dense weights: the largest singular value, by warm-started power iteration on persistent
    ``u``/``v`` buffers (``state.u``, ``state.v``). Convolutions: the norm of the convolution
    operator itself (stride, padding, dilation, groups included), by warm-started power
    iteration on input-shaped vectors (``conv.x``) — not the norm of the reshaped kernel.
    The state advances ``n_iters`` steps per forward in training mode only; the first
    evaluation runs ``n_iters_init`` steps.

    Power iteration converges to the norm from below, so the bound is exact up to the
    estimation error (tiny once warm); use :class:`~liptriton.parametrizations.Bjorck` for a
    dense bound that holds at any iteration count.

    Args:
        layout: the weight's :class:`WeightLayout`.
        k: the Lipschitz constant to reach.
        n_iters: power steps per training forward (None: 1; block steps for a convolution).
        n_iters_init: power steps on fresh state.
        in_channels: input channels of the convolution operator (convolutions only).
        input_size: initial spatial input size (convolutions only; learned at the first forward).
        device: device of the state buffers.
    """

    def __init__(self, layout: WeightLayout, k: float = 1.0, n_iters: int | None = None, n_iters_init: int = 200,
                 in_channels: int | None = None, input_size: tuple[int, ...] | None = None,
                 device=None) -> None:
        super().__init__(k)
        self.layout = layout
        if layout.is_conv:
            self.conv = ConvNormState(layout.spec, in_channels, input_size, n_iters, n_iters_init, device)
        else:
            self.state = MatrixNormState(layout.batch_shape, n_iters, n_iters_init, device)

    def compute(self, w: Tensor) -> Tensor:
        if self.layout.is_conv:
            sigma = self.conv.norm(w, update=self.training)
        else:
            sigma = self.state.norm(self.layout.to_batch(w), update=self.training)[0]
        return w * (self.k / sigma)


def spectral(module: nn.Module, name: str = "weight", *, k: float = 1.0, n_iters: int | None = None,
             n_iters_init: int = 200, input_size: tuple[int, ...] | None = None) -> nn.Module:
    """Constrain ``module.<name>`` to spectral norm ``k`` (the operator norm, for convolutions).

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, or any module
            with a 2-D tensor ``name``.
        name: the tensor to constrain.
        k: the Lipschitz constant of the layer (> 0).
        n_iters: power-iteration steps per training forward (>= 1, default 1; for a convolution,
            block steps of an 8-vector basis that follows swaps of its top singular vectors).
        n_iters_init: steps at the first evaluation (>= 1).
        input_size: spatial input size of a convolution, if known in advance (else learned at
            the first forward; the bound then holds for inputs up to the largest size seen).

    Returns:
        ``module``, with the parametrization registered.

    Raises:
        ValueError: bad ``k``/iteration counts, a missing tensor, or an unsupported layer.
        TypeError: a non-floating tensor.

    Examples:
        >>> import torch, liptriton
        >>> conv = liptriton.spectral(torch.nn.Conv2d(3, 8, 3, padding=1), k=2.0)
        >>> y = conv(torch.randn(1, 3, 16, 16))
    """
    owner = f"liptriton.spectral({type(module).__name__})"
    k = check_positive(owner, "k", k)
    check_iters(owner, "n_iters", n_iters, optional=True)
    check_iters(owner, "n_iters_init", n_iters_init)
    layout = WeightLayout(module, name, owner)
    tensor = getattr(module, name)
    p = Spectral(layout, k, n_iters, n_iters_init, getattr(module, "in_channels", None), input_size, tensor.device)
    return register(module, name, p, layout)
