"""Lipschitz parametrizations for ``torch.nn.utils.parametrize``, and the functions that register them."""

from liptriton.parametrizations._base import LipschitzParametrization, WeightLayout
from liptriton.parametrizations._register import initialize
from liptriton.parametrizations.aol import AOL, aol
from liptriton.parametrizations.bjorck import Bjorck, bjorck
from liptriton.parametrizations.frobenius import Frobenius, frobenius
from liptriton.parametrizations.householder import Householder, householder
from liptriton.parametrizations.spectral import Spectral, spectral

# lipschitzify's methods: method name -> the function that registers the parametrization.
METHODS = {"bjorck": bjorck, "spectral": spectral, "frobenius": frobenius, "householder": householder, "aol": aol}

__all__ = [
    "AOL",
    "METHODS",
    "Bjorck",
    "Frobenius",
    "Householder",
    "LipschitzParametrization",
    "Spectral",
    "WeightLayout",
    "aol",
    "bjorck",
    "frobenius",
    "householder",
    "initialize",
    "spectral",
]
