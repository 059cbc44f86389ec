"""Lipschitz constants of elementwise activations, for their modules and their functional forms.

Each constant (largest ``|f'|``, rounded up) is stated once: it holds for the module
(``nn.GELU``) and for its functional forms (``F.gelu``); certify, lipschitzify and the
function rules of :mod:`liptriton._fn_rules` read it from here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATION_CONSTANTS", "ACTIVATION_FUNCTIONS", "FUNCTION_CONSTANTS"]

# Largest |f'| (rounded up), measured on a 2e6-point grid of [-10, 10] in float64 and checked by tests.
ACTIVATION_CONSTANTS: dict[type, float] = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Tanh: 1.0, nn.Hardtanh: 1.0, nn.Softsign: 1.0, nn.Identity: 1.0,
    nn.Sigmoid: 0.25, nn.Hardsigmoid: 1.0 / 6.0, nn.LogSigmoid: 1.0, nn.Softplus: 1.0, nn.CELU: 1.0,
    nn.Tanhshrink: 1.0, nn.Softshrink: 1.0, nn.Flatten: 1.0, nn.Unflatten: 1.0,
    nn.GELU: 1.129, nn.SiLU: 1.0999, nn.Mish: 1.0885, nn.Hardswish: 1.5, nn.SELU: 1.7581,
}

# The functional forms of the activations whose constant is not 1 (lipschitzify scales them).
ACTIVATION_FUNCTIONS: dict[type, tuple[Callable, ...]] = {
    nn.Sigmoid: (torch.sigmoid, F.sigmoid), nn.GELU: (F.gelu,), nn.SiLU: (F.silu,), nn.Mish: (F.mish,),
    nn.Hardswish: (F.hardswish,), nn.SELU: (torch.selu, F.selu),
}

FUNCTION_CONSTANTS: dict[Callable, float] = {
    fn: ACTIVATION_CONSTANTS[cls] for cls, fns in ACTIVATION_FUNCTIONS.items() for fn in fns}
