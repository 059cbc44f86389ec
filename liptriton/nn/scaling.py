"""deel-torchlip's scaling-factor bookkeeping: ``ScaledLipschitzModule`` and ``SharedLipFactory``.

A :class:`ScaledLipschitzModule` reports a Lipschitz scaling factor (``get_scaling_factor``);
a :class:`SharedLipFactory` registers several of them and gives the product of their factors
(e.g. to undo the ``1 / sigma`` of :class:`liptriton.BatchLipNorm` layers at the end of a
sequential network). liptriton's own bound of a model comes from :func:`liptriton.certify`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LipschitzFactor", "ScaledLipschitzModule", "SharedLipFactory", "check_coefficient"]


class SharedLipFactory:
    """Registers :class:`ScaledLipschitzModule` layers and multiplies their scaling factors.

    Examples:
        >>> import liptriton
        >>> factory = SharedLipFactory()
        >>> bn = liptriton.BatchLipNorm(3, factory=factory)
        >>> factory.get_current_product_value(training=False)
        tensor(1.)
    """

    def __init__(self) -> None:
        self.modules: list[ScaledLipschitzModule] = []

    def register(self, module: ScaledLipschitzModule) -> None:
        """Add ``module`` to the product."""
        self.modules.append(module)

    def get_current_product_value(self, training: bool) -> Tensor:
        """The product of the registered layers' scaling factors (1 when none).

        Args:
            training: use the layers' training-mode factors (batch statistics) or eval-mode ones.

        Returns:
            A scalar tensor.
        """
        if not self.modules:
            return torch.ones(())
        scalings = [torch.as_tensor(m.get_scaling_factor(training=training)).reshape(())
                    for m in self.modules]
        return torch.prod(torch.stack(scalings))


class ScaledLipschitzModule:
    """Mixin of layers with a Lipschitz scaling factor (deel-torchlip's ``ScaledLipschitzModule``).

    Args:
        scaling: the layer has a scaling factor; if False, :meth:`get_scaling_factor` is 1.
        factory: a :class:`SharedLipFactory` to register with (needs ``scaling``).

    Raises:
        ValueError: a factory given with ``scaling=False``.

    Examples:
        >>> class Half(ScaledLipschitzModule):
        ...     def get_scaling(self, training=False):
        ...         return torch.tensor(0.5)
        >>> Half(scaling=True).get_scaling_factor()
        tensor(0.5000)
    """

    def __init__(self, scaling: bool = False, factory: SharedLipFactory | None = None) -> None:
        if factory is not None and not scaling:
            raise ValueError(f"{type(self).__name__}: factory must be None when scaling is False (a layer "
                             f"without a scaling factor has nothing to share), got {factory!r}")
        self.factory = factory
        self.scaling = scaling
        if factory is not None:
            factory.register(self)

    def get_scaling_factor(self, training: bool = False) -> Tensor:
        """The layer's factor as a tensor: :meth:`get_scaling` with ``scaling``, else ``torch.ones(1)``."""
        if not self.scaling:
            return torch.ones((1,))
        return torch.as_tensor(self.get_scaling(training=training))

    def get_scaling(self, training: bool = False) -> Tensor | float:
        """The scaling factor; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__}.get_scaling is not implemented")

    def vanilla_export(self):
        """A plain torch module computing the same function; subclasses define it."""
        raise NotImplementedError(f"{type(self).__name__}.vanilla_export is not implemented")


def check_coefficient(owner: str, arg: str, value: float) -> float:
    """Return ``float(value)`` if it is a finite number > 0, else raise a ValueError naming ``owner``/``arg``.

    Examples:
        >>> check_coefficient("Sequential", "k_coef_lip", 2)
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a finite number > 0, got {value!r}")
    return float(value)


class LipschitzFactor(ScaledLipschitzModule):
    """The Lipschitz factor ``k_coef_lip`` of a liptriton module, stated once: layers
    (:class:`~liptriton.nn.LipschitzModule`) and activations share it.

    ``k_coef_lip`` (deel-torchlip's ``_coefficient_lip``) is validated when set, then
    :meth:`apply_lipschitz_factor` makes it take effect (nothing to do when ``forward``
    multiplies by it, as activations and pooling do).

    Examples:
        >>> import liptriton
        >>> act = liptriton.GroupSort2()
        >>> act._coefficient_lip = 2.0
        >>> act.k_coef_lip, act.get_scaling()
        (2.0, 2.0)
    """

    _k_coef_lip: float

    def get_scaling(self, training: bool = False, update: bool = True) -> float:
        """The Lipschitz factor (deel-torchlip's ``get_scaling``)."""
        return self._k_coef_lip

    @property
    def k_coef_lip(self) -> float:
        """The Lipschitz factor of this module."""
        return self._k_coef_lip

    @k_coef_lip.setter
    def k_coef_lip(self, value: float) -> None:
        self._k_coef_lip = check_coefficient(type(self).__name__, "k_coef_lip", value)
        self.apply_lipschitz_factor()

    # deel-torchlip's name for the same number
    _coefficient_lip = k_coef_lip

    def apply_lipschitz_factor(self) -> None:
        """Make the factor take effect (nothing here: ``forward`` multiplies by it)."""
