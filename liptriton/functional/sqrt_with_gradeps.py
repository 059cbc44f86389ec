"""Square root whose gradient stays finite at 0: ``d sqrt(x) / dx = 1 / (2 (sqrt(x) + eps))``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["sqrt_with_gradeps"]


class _SqrtEpsGrad(torch.autograd.Function):
    """``sqrt`` with an eps in its derivative; the library's Function style (forward without ctx,
    ``setup_context``, a generated vmap rule), so it composes with torch.func."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, eps: float) -> Tensor:
        return torch.sqrt(input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, float], output: Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.eps = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        return grad_output / (2 * (out + ctx.eps)), None


def sqrt_with_gradeps(input: Tensor, eps: float = 1e-6) -> Tensor:
    r"""``sqrt(input)`` with the gradient :math:`1 / (2 (\sqrt{x} + \epsilon))` (finite at 0).

    As deel-torchlip's ``utils.sqrt_with_gradeps`` (used by L2-norm pooling).

    Args:
        input: a non-negative tensor.
        eps: added to ``sqrt(input)`` in the gradient's denominator (> 0).

    Returns:
        ``sqrt(input)``.

    Examples:
        >>> x = torch.zeros(2, requires_grad=True)
        >>> sqrt_with_gradeps(x).sum().backward()
        >>> x.grad
        tensor([500000., 500000.])
    """
    return _SqrtEpsGrad.apply(input, eps)
