"""Lipschitz activation modules, drop-in for deel-torchlip's (same constructor parameters).

MaxMin, GroupSort, GroupSort2, FullSort, LPReLU and HouseHolder. Each is exactly
``k_coef_lip``-Lipschitz in l2: the bound holds and is reached. GroupSort/FullSort/MaxMin run
one Triton kernel each on CUDA (forward and backward, k fused in); LPReLU and HouseHolder are
elementwise torch that torch.compile fuses. See :mod:`liptriton.functional.activations` for
where the semantics differ from deel-torchlip (LPReLU and HouseHolder at ``k_coef_lip != 1``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liptriton.functional.activations import (
    _group_sort,
    _max_min,
    check_k_coef_lip,
    householder_activation,
    lipschitz_prelu,
)
from liptriton.nn.scaling import LipschitzFactor, ScaledLipschitzModule

_THETA_INITS = {"zeros": nn.init.zeros_, "ones": nn.init.ones_, "normal": nn.init.normal_}

__all__ = ["FullSort", "GroupSort", "GroupSort2", "HouseHolder", "LPReLU", "MaxMin"]


class _FactorInForward(LipschitzFactor):
    """An activation: its factor ``k_coef_lip`` (:class:`~liptriton.nn.scaling.LipschitzFactor`,
    shared with the layers) multiplies its output in ``forward``, so setting it has nothing to
    re-apply; ``scaling`` follows it, and the module is its own plain form."""

    factory = None

    def __init__(self, *args, **kwargs) -> None:
        # the torch module's __init__ (next in the MRO after the mixins); the subclass sets k_coef_lip
        super(ScaledLipschitzModule, self).__init__(*args, **kwargs)

    @property
    def scaling(self) -> bool:
        """Whether the factor differs from 1 (deel-torchlip's ``ScaledLipschitzModule.scaling``)."""
        return self.k_coef_lip != 1.0

    def vanilla_export(self) -> nn.Module:
        """Return the module itself: it holds no parametrization to bake in."""
        return self  # type: ignore[return-value]


class MaxMin(_FactorInForward, nn.Module):
    r"""MaxMin activation: ``k * cat(relu(x), relu(-x), dim)``, exactly k-Lipschitz.

    Args:
        dim: the doubled dimension; None: 0 for an input of shape (C), 1 for (N, C, \*).
        k_coef_lip: the Lipschitz constant k (multiplies the output).

    Shape:
        Input (C) or (N, C, \*); output with ``2 * C`` entries along ``dim``.

    Examples:
        >>> MaxMin()(torch.tensor([[1.0, -2.0]]))
        tensor([[1., 0., 0., 2.]])
    """

    def __init__(self, dim: int | None = None, k_coef_lip: float = 1.0) -> None:
        super().__init__()
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
            raise TypeError(f"MaxMin: dim must be an int or None, got {type(dim).__name__}")
        self.dim = dim
        self.k_coef_lip = check_k_coef_lip(k_coef_lip, "MaxMin")

    def forward(self, input: Tensor) -> Tensor:
        return _max_min(input, self.dim, self.k_coef_lip, "MaxMin")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, k_coef_lip={self.k_coef_lip}"


class GroupSort(_FactorInForward, nn.Module):
    r"""GroupSort activation: sort groups of ``group_size`` consecutive channels, times k.

    The channels (dim 1 of an (N, C, \*) input) are split into ``C // group_size`` groups of
    consecutive entries and each group is sorted ascending. A permutation is norm-preserving,
    so the activation is exactly k-Lipschitz.

    Args:
        group_size: a divisor of the channel count; None (or a larger value) sorts all
            channels (FullSort), as in deel-torchlip.
        k_coef_lip: the Lipschitz constant k (multiplies the output).

    Shape:
        Input (N, C, \*); output the same shape.

    Examples:
        >>> GroupSort(4)(torch.tensor([[0.28, -2.05, 0.65, 0.57]]))
        tensor([[-2.0500,  0.2800,  0.5700,  0.6500]])
    """

    def __init__(self, group_size: int | None = None, k_coef_lip: float = 1.0) -> None:
        super().__init__()
        name = type(self).__name__
        if group_size is not None:
            if isinstance(group_size, bool) or not isinstance(group_size, int):
                raise TypeError(f"{name}: group_size must be a positive int or None, got {group_size!r}")
            if group_size < 1:
                raise ValueError(f"{name}: group_size must be a positive int or None, got {group_size}")
        self.group_size = group_size
        self.k_coef_lip = check_k_coef_lip(k_coef_lip, name)

    def forward(self, input: Tensor) -> Tensor:
        return _group_sort(input, self.group_size, 1, self.k_coef_lip, type(self).__name__)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, k_coef_lip={self.k_coef_lip}"


class GroupSort2(GroupSort):
    r"""GroupSort with groups of 2: ``(min, max)`` of each channel pair, times k.

    Args:
        k_coef_lip: the Lipschitz constant k.

    Examples:
        >>> GroupSort2()(torch.tensor([[3.0, 1.0]]))
        tensor([[1., 3.]])
    """

    def __init__(self, k_coef_lip: float = 1.0) -> None:
        super().__init__(group_size=2, k_coef_lip=k_coef_lip)


class FullSort(GroupSort):
    r"""FullSort: sort all channels, times k (GroupSort with one group).

    Args:
        k_coef_lip: the Lipschitz constant k.

    Examples:
        >>> FullSort()(torch.tensor([[3.0, 1.0, 2.0]]))
        tensor([[1., 2., 3.]])
    """

    def __init__(self, k_coef_lip: float = 1.0) -> None:
        super().__init__(group_size=None, k_coef_lip=k_coef_lip)


class LPReLU(_FactorInForward, nn.PReLU):
    r"""PReLU with a Lipschitz constraint: ``k * prelu(x, clamp(a, -1, 1))``, exactly k-Lipschitz.

    At ``k_coef_lip = 1`` this is deel-torchlip's LPReLU. For other k, deel-torchlip clamps
    ``a`` to [-k, k] without scaling (constant ``max(1, |a'|)``, above k when k < 1); here the
    slopes are ``k`` and ``k a'`` with ``|a'| <= 1``, so the constant is k whatever ``a`` learns.

    Args:
        num_parameters: number of slopes ``a``: 1, or the number of input channels.
        init: the initial value of ``a``.
        k_coef_lip: the Lipschitz constant k.

    Examples:
        >>> LPReLU(init=0.5, k_coef_lip=2.0)(torch.tensor([[1.0, -1.0]]))
        tensor([[ 2., -1.]], grad_fn=<MulBackward0>)
    """

    def __init__(self, num_parameters: int = 1, init: float = 0.25, k_coef_lip: float = 1.0) -> None:
        if isinstance(num_parameters, bool) or not isinstance(num_parameters, int) or num_parameters < 1:
            raise ValueError(f"LPReLU: num_parameters must be a positive int (1 or the channel count), "
                             f"got {num_parameters!r}")
        super().__init__(num_parameters=num_parameters, init=init)
        self.k_coef_lip = check_k_coef_lip(k_coef_lip, "LPReLU")

    def forward(self, input: Tensor) -> Tensor:
        if not input.is_floating_point():
            raise TypeError(f"LPReLU: input must be a floating-point tensor, got dtype {input.dtype}")
        channels = input.shape[1] if input.dim() >= 2 else 1
        if self.num_parameters != 1 and self.num_parameters != channels:
            raise ValueError(f"LPReLU: num_parameters={self.num_parameters} must be 1 or the channel "
                             f"count (dim 1) of the input, got input shape {tuple(input.shape)}")
        return lipschitz_prelu(input, self.weight, self.k_coef_lip)

    def vanilla_export(self) -> nn.Module:
        """A plain ``nn.PReLU`` with the clamped slopes when k = 1; the module itself otherwise."""
        if self.k_coef_lip != 1.0:
            return self
        layer = nn.PReLU(self.num_parameters).to(self.weight.device, self.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.weight.clamp(-1.0, 1.0))
        return layer

    def extra_repr(self) -> str:
        return f"num_parameters={self.num_parameters}, k_coef_lip={self.k_coef_lip}"


class HouseHolder(_FactorInForward, nn.Module):
    r"""Householder activation (Singla et al. 2022), times k: exactly k-Lipschitz.

    The channels are split in halves ``(x, y)``; each pair is kept or reflected across the
    line of angle ``theta / 2`` (a learnable angle per pair), see
    :func:`liptriton.functional.householder_activation`. Unlike deel-torchlip (which ignores
    it), ``k_coef_lip`` multiplies the output.

    Args:
        channels: the (even) number of input channels.
        k_coef_lip: the Lipschitz constant k.
        theta_initializer: None (theta = pi/2), a float (that constant), or "zeros", "ones",
            "normal".

    Examples:
        >>> HouseHolder(4)(torch.randn(2, 4, 3)).shape
        torch.Size([2, 4, 3])
    """

    def __init__(self, channels, k_coef_lip: float = 1.0, theta_initializer=None) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2 or channels % 2:
            raise ValueError(f"HouseHolder: channels must be a positive even int, got {channels!r}")
        self.channels = channels
        self.k_coef_lip = check_k_coef_lip(k_coef_lip, "HouseHolder")
        if theta_initializer is None:
            value = 0.5 * math.pi
        elif isinstance(theta_initializer, (int, float)) and not isinstance(theta_initializer, bool):
            value = float(theta_initializer)
        elif isinstance(theta_initializer, str) and theta_initializer in _THETA_INITS:
            value = 0.5 * math.pi
        else:
            raise ValueError(f"HouseHolder: theta_initializer must be None, a float or one of "
                             f"{sorted(_THETA_INITS)}, got {theta_initializer!r}")
        self.theta = nn.Parameter(torch.full((channels // 2,), value))
        if isinstance(theta_initializer, str):
            _THETA_INITS[theta_initializer](self.theta)

    def forward(self, z: Tensor, axis: int = 1) -> Tensor:
        if not z.is_floating_point():
            raise TypeError(f"HouseHolder: input must be a floating-point tensor, got dtype {z.dtype}")
        if not -z.dim() <= axis < z.dim():
            raise ValueError(f"HouseHolder: axis must be in [{-z.dim()}, {z.dim()}) for an input of shape "
                             f"{tuple(z.shape)}, got {axis}")
        if z.shape[axis] != self.channels:
            raise ValueError(f"HouseHolder: the input must have channels={self.channels} entries along "
                             f"axis {axis}, got input shape {tuple(z.shape)}")
        return householder_activation(z, self.theta, axis, self.k_coef_lip)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k_coef_lip={self.k_coef_lip}"
