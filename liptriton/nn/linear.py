"""Dense layers of deel-torchlip, drop-in: SpectralLinear and FrobeniusLinear.

Each is an ``nn.Linear`` (orthogonal init, zero bias, as deel-torchlip) with a liptriton
parametrization on ``weight`` whose ``k`` is the layer's ``k_coef_lip``.
"""

from __future__ import annotations

from torch import nn

from liptriton.nn.containers import LipschitzModule
from liptriton.nn.conv import _constrain_spectral, _orthogonal_init
from liptriton.nn.padconv import plain_torch_layer
from liptriton.parametrizations import frobenius

__all__ = ["FrobeniusLinear", "SpectralLinear"]


class SpectralLinear(LipschitzModule, nn.Linear):
    """Linear layer with all singular values of the weight equal to ``k_coef_lip`` (Björck).

    Warm-started power iteration brings the largest singular value to 1, 15 Björck steps push
    all of them to 1 (never above), then the weight is scaled by ``k_coef_lip``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (initialized to zero).
        k_coef_lip: the Lipschitz constant (reached).
        eps_spectral: accepted for compatibility (> 0): deel-torchlip's power-iteration
            tolerance; here the count is fixed (5 warm-started steps per training forward).
        eps_bjorck: accepted for compatibility (> 0): the Björck count is fixed (15);
            None disables orthogonalization, as in deel-torchlip (spectral normalization and
            one Björck step that keeps the bound exact; see :mod:`liptriton.nn.conv`).

    Examples:
        >>> import torch
        >>> lin = SpectralLinear(16, 8)
        >>> s = torch.linalg.svdvals(lin.weight.detach())
        >>> bool(s.min() > 0.99 and s.max() <= 1.001)
        True
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, k_coef_lip: float = 1.0,
                 eps_spectral: float = 1e-3, eps_bjorck: float | None = 1e-3) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        LipschitzModule.__init__(self, k_coef_lip)
        _orthogonal_init(self)
        _constrain_spectral(self, self.k_coef_lip, eps_spectral, eps_bjorck)

    def vanilla_export(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the constrained (eval-mode) weight baked in."""
        return plain_torch_layer(self)


class FrobeniusLinear(LipschitzModule, nn.Linear):
    """Linear layer normalized by the Frobenius norm of its weight (per neuron by default).

    With ``disjoint_neurons=True`` (default) every output neuron is ``k_coef_lip``-Lipschitz
    (row norms equal k): the stacking of independent neurons, whose whole-layer constant can reach
    ``k * sqrt(out_features)``. With ``disjoint_neurons=False`` the whole layer is
    ``k_coef_lip``-Lipschitz. For one output, both equal SpectralLinear, cheaper.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        bias: learn an additive bias (initialized to zero).
        disjoint_neurons: normalize each neuron separately.
        k_coef_lip: the Lipschitz constant.

    Examples:
        >>> import torch
        >>> lin = FrobeniusLinear(16, 1)
        >>> round(float(lin.weight.detach().norm()), 4)
        1.0
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, disjoint_neurons: bool = True,
                 k_coef_lip: float = 1.0) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias=bias)
        LipschitzModule.__init__(self, k_coef_lip)
        _orthogonal_init(self)
        self.disjoint_neurons = bool(disjoint_neurons)
        frobenius(self, "weight", k=self.k_coef_lip, disjoint_neurons=self.disjoint_neurons)

    def vanilla_export(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the normalized weight baked in."""
        return plain_torch_layer(self)
