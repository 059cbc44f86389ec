"""Lipschitz parametrizations for ``torch.nn.utils.parametrize``, and the functions that register them."""

from liptriton.parametrizations._base import LipschitzParametrization, WeightLayout, initialize
from liptriton.parametrizations.bjorck import Bjorck, bjorck
from liptriton.parametrizations.frobenius import Frobenius, frobenius
from liptriton.parametrizations.householder import Householder, householder
from liptriton.parametrizations.spectral import Spectral, spectral

__all__ = [
    "Bjorck",
    "Frobenius",
    "Householder",
    "LipschitzParametrization",
    "Spectral",
    "WeightLayout",
    "bjorck",
    "frobenius",
    "householder",
    "initialize",
    "spectral",
]
