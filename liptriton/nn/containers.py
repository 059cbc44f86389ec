"""Containers of deel-torchlip, drop-in: LipschitzModule, Sequential, LipResidual, vanilla_model.

Unlike deel-torchlip, a Lipschitz factor set after construction (``Sequential(k_coef_lip=K)``
sets one on every Lipschitz child) reaches the layer's parametrizations, so the composed
network really is K-Lipschitz.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from liptriton.nn.scaling import LipschitzFactor, ScaledLipschitzModule, SharedLipFactory, check_coefficient
from liptriton.parametrizations import LipschitzParametrization

__all__ = ["LipResidual", "LipschitzModule", "Sequential", "check_coefficient", "vanilla_model"]

def has_lipschitz_factor(module: nn.Module) -> bool:
    """True when ``module`` takes a Lipschitz factor (``_coefficient_lip``): liptriton layers,
    pooling and activations."""
    return isinstance(module, LipschitzModule) or hasattr(type(module), "_coefficient_lip")


def _child_constant(module: nn.Module) -> float:
    """The Lipschitz constant of a Sequential child that has no Lipschitz factor, by its rule
    (:mod:`liptriton.rules`); ``inf`` for an unconstrained weighted layer (its weights are free)."""
    from liptriton.rules import is_constrained, module_constant

    if is_constrained(module) and not parametrize.is_parametrized(module):
        return math.inf
    return module_constant(module, None, nominal=True)[0]


class LipschitzModule(LipschitzFactor):
    """Mixin of every liptriton layer with a Lipschitz factor (deel-torchlip's ``LipschitzModule``).

    The factor (``k_coef_lip``, also readable and settable as deel-torchlip's ``_coefficient_lip``)
    is the ``k`` of the layer's Lipschitz parametrizations: setting it re-applies it at once
    (:meth:`apply_lipschitz_factor`), so a container can rescale a layer after construction.

    Args:
        coefficient_lip: the Lipschitz constant of the layer (> 0).
        factory: a :class:`~liptriton.nn.scaling.SharedLipFactory` to register with (only with a
            factor != 1, as deel-torchlip).

    Examples:
        >>> import liptriton
        >>> lin = liptriton.SpectralLinear(4, 4)
        >>> lin._coefficient_lip = 2.0  # now 2-Lipschitz
    """

    def __init__(self, coefficient_lip: float = 1.0, factory: SharedLipFactory | None = None) -> None:
        self._k_coef_lip = check_coefficient(type(self).__name__, "k_coef_lip", coefficient_lip)
        ScaledLipschitzModule.__init__(self, scaling=self._k_coef_lip != 1.0, factory=factory)

    def _lipschitz_parametrizations(self) -> list[LipschitzParametrization]:
        if not parametrize.is_parametrized(self):  # type: ignore[arg-type]
            return []
        return [p for plist in self.parametrizations.values() for p in plist  # type: ignore[attr-defined]
                if isinstance(p, LipschitzParametrization)]

    def apply_lipschitz_factor(self) -> None:
        """Make the layer's parametrizations scale to ``k_coef_lip`` (idempotent).

        deel-torchlip multiplies the weight by the factor once, at construction; here the factor
        is the ``k`` of the parametrizations, so changing it later takes effect.
        """
        for p in self._lipschitz_parametrizations():
            p.set_k(self._k_coef_lip)

    def lipschitz_bound(self) -> float:
        """The layer's l2 Lipschitz constant: the product of its parametrizations' bounds (see
        :meth:`~liptriton.parametrizations.LipschitzParametrization.lipschitz_bound` for when it is
        guaranteed), else the factor."""
        ps = self._lipschitz_parametrizations()
        return math.prod(p.lipschitz_bound() for p in ps) if ps else self._k_coef_lip

    def vanilla_export(self) -> nn.Module:
        """Return a plain torch module computing the same function (constraints baked in)."""
        raise NotImplementedError(f"{type(self).__name__}.vanilla_export is not implemented")


class Sequential(LipschitzModule, nn.Sequential):
    """``nn.Sequential`` whose composition is ``k_coef_lip``-Lipschitz.

    The ``n`` children with a Lipschitz factor (liptriton layers, pooling, activations, nested
    Sequentials) each get ``k_coef_lip ** (1 / n)``, and the factor really reaches their
    parametrizations (deel-torchlip sets it on the attribute only, leaving its spectral layers
    1-Lipschitz). As in deel-torchlip, a child's own ``k_coef_lip`` is overridden by its share.
    Children without a Lipschitz factor whose rule (:mod:`liptriton.rules`) does not make them
    1-Lipschitz (an unconstrained Linear, a GELU, a module without a rule) raise a warning.

    Args:
        *args: the layers (or one OrderedDict), as ``nn.Sequential``.
        k_coef_lip: the Lipschitz constant of the whole network (> 0).

    Examples:
        >>> import liptriton
        >>> net = liptriton.Sequential(liptriton.SpectralLinear(4, 8), liptriton.GroupSort2(),
        ...                            liptriton.SpectralLinear(8, 1), k_coef_lip=2.0)
    """

    def __init__(self, *args: Any, k_coef_lip: float = 1.0) -> None:
        nn.Sequential.__init__(self, *args)
        LipschitzModule.__init__(self, k_coef_lip)
        for module in self.children():
            if not has_lipschitz_factor(module) and not _child_constant(module) <= 1.0:
                warnings.warn(f"Sequential: {module} is not a known Lipschitz layer: the bound of the "
                              "network does not account for it", stacklevel=2)
        self.apply_lipschitz_factor()

    def apply_lipschitz_factor(self) -> None:
        """Give each of the ``n`` Lipschitz children the factor ``k_coef_lip ** (1 / n)``."""
        scaled = [m for m in self.children() if has_lipschitz_factor(m)]
        if not scaled:
            if self._k_coef_lip != 1.0:
                raise ValueError("Sequential: k_coef_lip != 1 needs at least one layer with a Lipschitz factor "
                                 "(a liptriton layer, pooling or activation), got none")
            return
        share = self._k_coef_lip ** (1.0 / len(scaled))
        for m in scaled:
            m._coefficient_lip = share

    def lipschitz_bound(self) -> float:
        """Product of the children's bounds (others by their rule in :mod:`liptriton.rules`; inf for
        an unconstrained weighted layer or a module without a rule)."""
        bound = 1.0
        for m in self.children():
            if hasattr(m, "lipschitz_bound"):
                bound *= m.lipschitz_bound()
            elif has_lipschitz_factor(m):
                bound *= m._coefficient_lip
            else:
                bound *= _child_constant(m)
        return bound

    def vanilla_export(self) -> nn.Sequential:
        """A plain ``nn.Sequential`` of the children's vanilla exports (others deep-copied)."""
        layers = []
        for name, layer in self.named_children():
            layers.append((name, vanilla_model(copy.deepcopy(layer), in_place=True)))
        return nn.Sequential(OrderedDict(layers))


class LipResidual(nn.Module):
    """1-Lipschitz residual merge ``a x + (1 - a) y`` with ``a = sigmoid(alpha)`` learned.

    With ``y = f(x)`` and ``f`` 1-Lipschitz, ``x -> a x + (1 - a) f(x)`` is 1-Lipschitz (a convex
    combination of 1-Lipschitz maps) for every ``a`` in [0, 1]: the initial weight changes how
    much signal the network keeps, never its bound.

    Args:
        weight: the initial ``a``, in (0, 1) (default 0.5, deel-torchlip's ``alpha = 0``).
            :func:`liptriton.lipschitzify` gives the skip connection 0.9 (see its ``residual``
            option): a product of 0.5 per block loses the identity path of a deep network.

    Examples:
        >>> res = LipResidual()
        >>> x = torch.randn(2, 3)
        >>> out = res(x, torch.tanh(x))
        >>> round(LipResidual(weight=0.9).convex_weights()[0], 6)
        0.9
    """

    def __init__(self, weight: float = 0.5) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 < weight < 1.0:
            raise ValueError(f"LipResidual: weight must be a number in (0, 1), got {weight!r}")
        self.alpha = nn.Parameter(torch.tensor(math.log(weight / (1.0 - weight))))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.alpha)
        return alpha * x + (1 - alpha) * y

    def convex_weights(self) -> list[float]:
        """The weights ``[a, 1 - a]`` of the two terms (certify's and export's view)."""
        a = float(torch.sigmoid(self.alpha.detach().double()))
        return [a, 1.0 - a]


def vanilla_model(model: nn.Module, in_place: bool = True, new_module: nn.Module | None = None) -> nn.Module:
    """Replace every Lipschitz layer of ``model`` by its plain torch counterpart (weights baked in).

    Each module becomes its plain form by its rule (:func:`liptriton.rules.plain_form`):
    liptriton layers their ``vanilla_export``, parametrized ``nn.Linear``/``nn.Conv*``/
    ``nn.ConvTranspose*`` (e.g. ``liptriton.bjorck(nn.Linear(...))``) the plain torch layer;
    containers are visited recursively. A ``model`` that itself has ``vanilla_export`` is exported.

    Args:
        model: the Lipschitz network.
        in_place: modify ``model`` (default, as deel-torchlip) or work on a deep copy.
        new_module: internal (recursion), leave None.

    Returns:
        The network with no parametrization left.

    Examples:
        >>> import liptriton, torch
        >>> net = torch.nn.Sequential(liptriton.SpectralLinear(4, 2))
        >>> type(vanilla_model(net)[0]).__name__
        'Linear'
    """
    from liptriton.rules import plain_form

    if new_module is None:
        new_module = model if in_place else copy.deepcopy(model)
        if (plain := plain_form(new_module)) is not None:
            return plain
    for name, child in list(new_module.named_children()):
        if name == "parametrizations" and parametrize.is_parametrized(new_module):
            continue
        if (plain := plain_form(child)) is not None:
            setattr(new_module, name, plain)
        elif len(list(child.children())) > 0:
            vanilla_model(child, in_place=True, new_module=child)
    return new_module
