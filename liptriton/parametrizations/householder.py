"""Householder parametrization: an exactly orthogonal weight as a product of reflections."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from liptriton.ops.householder import householder_product
from liptriton.parametrizations._base import LipschitzParametrization, WeightLayout, make_conv_state
from liptriton.parametrizations._register import register
from liptriton.parametrizations._checks import check_bound, check_iters, check_positive

__all__ = ["Householder", "householder"]


def _reflectors(a: Tensor) -> Tensor:
    """Householder vectors (rows) of the QR of a tall matrix ``a`` (d x r): ``a = H_1..H_r R``."""
    qr, tau = torch.geqrf(a)
    d, r = a.shape
    v = torch.tril(qr, diagonal=-1)[:, :r].mT.clone()  # (r, d), below-diagonal parts
    v[torch.arange(r), torch.arange(r)] = 1.0
    v[tau == 0] = 0.0  # tau = 0: the reflection is the identity (a zero vector here)
    return v


class Householder(LipschitzParametrization):
    """``k * (H_1 ... H_r)[:m, :n]`` per group: orthonormal rows or columns, exactly, no iteration.

    The original tensor is the stack of reflection vectors, shape (groups, r, d) with
    ``d = max(m, n)`` and ``r = min(m, n)`` by default; registering (or assigning the weight)
    stores the reflectors of the QR decomposition of the given weight, so the layer starts at
    its orthogonal factor (up to the signs of R's diagonal). Convolutions are then normalized by
    the norm of their operator, like :class:`~liptriton.parametrizations.Bjorck` (a proven upper
    bound of it with ``bound="certified"``, the default).

    Args:
        layout: the weight's :class:`WeightLayout`.
        k: the Lipschitz constant.
        n_reflections: number of reflections r (default ``min(m, n)``).
        power_iters: block power steps per training forward (convolutions only).
        power_iters_init: block power steps on a fresh state (convolutions only).
        in_channels: input channels of the convolution operator (convolutions only).
        input_size: initial spatial input size (convolutions only).
        device: device of the state buffers.
        bound: "certified" or "estimate" (the convolution operator's norm).
    """

    def __init__(self, layout: WeightLayout, k: float = 1.0, n_reflections: int | None = None,
                 power_iters: int | None = None, power_iters_init: int = 200, in_channels: int | None = None,
                 input_size: tuple[int, ...] | None = None, device=None, bound: str = "certified") -> None:
        super().__init__(k)
        self.layout, self.bound = layout, bound
        _, m, n = layout.batch_shape
        self.rows, self.cols = m, n
        self.n_reflections = n_reflections or min(m, n)
        if layout.is_conv:
            self.conv = make_conv_state(bound, layout, in_channels, input_size, power_iters, power_iters_init,
                                        device)

    def right_inverse(self, w: Tensor) -> Tensor:
        """Reflection vectors (groups, r, d) whose product is the orthogonal factor of ``w``."""
        wb = self.layout.to_batch(w.detach().float())
        out = []
        for g in range(wb.shape[0]):
            tall = self.rows >= self.cols
            v = _reflectors(wb[g] if tall else wb[g].mT)
            v = v if tall else v.flip(0)  # (Q^T)[:m] = H_r ... H_1: reverse the order for wide
            extra = self.n_reflections - v.shape[0]
            if extra > 0:
                v = torch.cat([v, v.new_zeros(extra, v.shape[1])])
            out.append(v[: self.n_reflections])
        return torch.stack(out).to(w.dtype)

    def compute(self, v: Tensor) -> Tensor:
        q = torch.stack([householder_product(v[g], self.rows, self.cols) for g in range(v.shape[0])])
        w = self.layout.from_batch(q)
        if self.layout.is_conv:
            return w / self.conv.norm(w, update=self.training) * self.k
        return w * self.k


def householder(module: nn.Module, name: str = "weight", *, k: float = 1.0, n_reflections: int | None = None,
                power_iters: int | None = None, power_iters_init: int = 200,
                input_size: tuple[int, ...] | None = None, bound: str = "certified") -> nn.Module:
    """Constrain ``module.<name>`` to ``k`` times an exactly orthogonal matrix (Householder product).

    The parameter becomes the reflection vectors (``module.parametrizations.<name>.original``);
    it starts at the orthogonal factor of the current weight.

    Args:
        module: an ``nn.Linear``, a convolution, or any module with a 2-D tensor ``name``.
        name: the tensor to constrain.
        k: the Lipschitz constant (> 0).
        n_reflections: number of reflections (default ``min(m, n)``, enough to reach every
            matrix with orthonormal rows or columns up to signs).
        power_iters: block power steps per training forward on the convolution operator (default 1).
        power_iters_init: power steps at the first evaluation.
        input_size: spatial input size of a convolution if known in advance.
        bound: "certified" (default: a proven upper bound of a convolution's operator norm at
            every forward) or "estimate" (the power-iteration estimate alone).

    Returns:
        ``module``, with the parametrization registered.

    Raises:
        ValueError: bad ``k``/counts, a missing tensor, or an unsupported layer.
        TypeError: a non-floating tensor.

    Examples:
        >>> import torch, liptriton
        >>> lin = liptriton.householder(torch.nn.Linear(8, 8))
        >>> w = lin.weight.detach()
        >>> torch.allclose(w @ w.T, torch.eye(8), atol=1e-5)
        True
    """
    owner = f"liptriton.householder({type(module).__name__})"
    k = check_positive(owner, "k", k)
    check_iters(owner, "power_iters", power_iters, optional=True)
    check_iters(owner, "power_iters_init", power_iters_init)
    if n_reflections is not None:
        check_iters(owner, "n_reflections", n_reflections)
    check_bound(owner, bound)
    layout = WeightLayout(module, name, owner)
    tensor = getattr(module, name)
    p = Householder(layout, k, n_reflections, power_iters, power_iters_init,
                    getattr(module, "in_channels", None), input_size, tensor.device, bound)
    return register(module, name, p, layout)
