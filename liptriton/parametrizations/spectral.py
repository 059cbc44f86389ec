"""Spectral normalization: ``W * k / ||W||``, with the norm of the operator the layer applies."""

from __future__ import annotations

from torch import Tensor, nn

from liptriton.parametrizations._base import (
    LipschitzParametrization,
    WeightLayout,
    make_conv_state,
    make_matrix_state,
)
from liptriton.parametrizations._register import register
from liptriton.parametrizations._checks import check_bound, check_iters, check_positive, renamed

__all__ = ["Spectral", "spectral"]

_RENAMES = {"n_iters": "power_iters", "n_iters_init": "power_iters_init"}


class Spectral(LipschitzParametrization):
    """Divide the weight by (a certified bound of) its spectral norm and scale by ``k``.

    Dense weights: the largest singular value; convolutions: the norm of the convolution
    operator itself (stride, padding, dilation, groups included), not of the reshaped kernel.

    ``bound="certified"`` (default): the divisor is proven ``>=`` the norm at every forward, in
    training too, whatever the optimizer does: warm-started power iteration on the Gram matrix
    (of the weight, of the operator's matrix for small convolutions, or of its frequency blocks,
    see :mod:`liptriton.bounds.conv_fourier`) estimates it from below, and a Cholesky factorization
    proves the estimate times ``1 + 1e-3`` (else ``1.02``, else a looser Gram-iteration bound)
    is above every singular value. ``bound="estimate"``: torch's semantics, the power-iteration
    estimate alone (from below: an optimizer that outruns it makes the layer exceed ``k``).
    The state advances ``power_iters`` steps per forward in training mode; the first evaluation
    runs ``power_iters_init`` steps.

    Args:
        layout: the weight's :class:`WeightLayout`.
        k: the Lipschitz constant to reach.
        power_iters: steps of the norm estimate per training forward (None: 8 Lanczos steps with
            ``bound="certified"``; 1 power step, a block step for a convolution, with "estimate").
        power_iters_init: steps on fresh state.
        in_channels: input channels of the convolution operator (convolutions only).
        input_size: initial spatial input size (convolutions only; learned at the first forward).
        device: device of the state buffers.
        bound: "certified" (a proven upper bound) or "estimate" (power iteration alone).
        **deprecated: ``n_iters`` / ``n_iters_init``, the former names of ``power_iters`` /
            ``power_iters_init`` (DeprecationWarning).
    """

    def __init__(self, layout: WeightLayout, k: float = 1.0, power_iters: int | None = None,
                 power_iters_init: int = 200, in_channels: int | None = None,
                 input_size: tuple[int, ...] | None = None, device=None, bound: str = "certified",
                 **deprecated) -> None:
        super().__init__(k)
        it = renamed("Spectral", deprecated, _RENAMES, {"power_iters": power_iters, "power_iters_init": power_iters_init})
        self.layout, self.bound = layout, bound
        if layout.is_conv:
            self.conv = make_conv_state(bound, layout, in_channels, input_size, it["power_iters"],
                                        it["power_iters_init"], device)
        else:
            self.state = make_matrix_state(bound, layout, it["power_iters"], it["power_iters_init"], device)

    def compute(self, w: Tensor) -> Tensor:
        if self.layout.is_conv:
            sigma = self.conv.norm(w, update=self.training)
        else:
            sigma = self.state.norm(self.layout.to_batch(w), update=self.training)
            sigma = sigma if sigma.dim() == 0 else sigma.max()
        return w / sigma * self.k


def spectral(module: nn.Module, name: str = "weight", *, k: float = 1.0, power_iters: int | None = None,
             power_iters_init: int = 200, input_size: tuple[int, ...] | None = None,
             bound: str = "certified", **deprecated) -> nn.Module:
    """Constrain ``module.<name>`` to spectral norm ``k`` (the operator norm, for convolutions).

    With the default ``bound="certified"`` the layer's norm is ``<= k`` at every forward, in
    training too (the divisor is a proven upper bound, within about 0.1% of the norm for dense
    weights and small convolutions, and within the frequency bound's excess for large ones);
    ``bound="estimate"`` divides by the power-iteration estimate alone, as
    ``torch.nn.utils.parametrizations.spectral_norm`` does.

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d``, or any module
            with a 2-D tensor ``name``.
        name: the tensor to constrain.
        k: the Lipschitz constant of the layer (> 0).
        power_iters: steps of the norm estimate per training forward (>= 1; default 8 Lanczos
            steps on the Gram matrix with ``bound="certified"``; 1 power step with ``"estimate"``,
            for a convolution a block step of an 8-vector basis that follows swaps of its top
            singular vectors).
        power_iters_init: steps at the first evaluation (>= 1).
        input_size: spatial input size of a convolution, if known in advance (else learned at
            the first forward; the bound then holds for inputs up to the largest size seen).
        bound: "certified" (default) or "estimate", see above.
        **deprecated: ``n_iters`` / ``n_iters_init``, the former names of ``power_iters`` /
            ``power_iters_init`` (DeprecationWarning).

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
    it = renamed(owner, deprecated, _RENAMES, {"power_iters": power_iters, "power_iters_init": power_iters_init})
    check_iters(owner, "power_iters", it["power_iters"], optional=True)
    check_iters(owner, "power_iters_init", it["power_iters_init"])
    check_bound(owner, bound)
    layout = WeightLayout(module, name, owner)
    tensor = getattr(module, name)
    p = Spectral(layout, k, it["power_iters"], it["power_iters_init"], getattr(module, "in_channels", None),
                 input_size, tensor.device, bound)
    return register(module, name, p, layout)
