"""The rules of liptriton's own module types (see :mod:`liptriton.rules.registry` for the fields).

liptriton layers state their bound (``lipschitz_bound()``, trusted for lipschitzify's planning;
certify measures the weights through the torch parent's rule instead) and their plain form
(``vanilla_export``). Activations and the modules lipschitzify inserts are leaves of the graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from liptriton.bounds.pooling import window_overlap
from liptriton.nn.activations import _FactorInForward
from liptriton.nn.containers import LipResidual, LipschitzModule, Sequential
from liptriton.nn.inserted import ConvexSum, Scaled, ScaledAdaptivePool
from liptriton.nn.normalization import BatchLipNorm, LayerCentering, ScaleBiasLayer
from liptriton.nn.pooling import (
    InvertibleDownSampling,
    InvertibleUpSampling,
    ScaledAdaptativeL2NormPool2d,
    ScaledL2NormPool2d,
)
from liptriton.nn.scaling import ScaledLipschitzModule
from liptriton.rules.registry import KEEP, ModuleRule, const, module_constant

__all__ = ["LIPTRITON_RULES"]


def _keep(mod, where, report, ctx):
    return KEEP


def _own_bound(mod, shape, nominal):
    """lipschitzify trusts the layer's bound; certify defers to the torch parent (the weights)."""
    return (float(mod.lipschitz_bound()), "module's lipschitz_bound()") if nominal else None


def _vanilla(mod) -> nn.Module | None:
    try:
        new = mod.vanilla_export()
    except NotImplementedError:
        return None
    return None if new is mod else new


def _no_children(mod) -> bool:
    return all(name == "parametrizations" for name, _ in mod.named_children())


def _k_coef(what: str) -> ModuleRule:
    return ModuleRule(constant=lambda m, s, n: (float(m.k_coef_lip), what), homogeneous=True)


def _batch_lip_norm(mod, shape, nominal):
    if mod.training:
        return math.inf, "batch statistics (not an eval-mode affine map)"
    return (float(mod.get_scaling()) if mod.normalize else 1.0), "eval-mode scale"


def _l2_pool(mod, shape, nominal):
    c = math.sqrt(window_overlap(mod.kernel_size, mod.stride, 1, 2)) * mod.k_coef_lip
    return c, "overlap (l2 pooling) x k_coef_lip"


def _scale_bias(mod, shape, nominal):
    return float(torch.as_tensor(mod.scalar).detach().abs().max()), "|scalar|"


def _scaled(mod, shape, nominal):
    c, note = module_constant(mod.module, shape, nominal)
    return mod.scale * c, f"{mod.scale:.4g} x ({note})"


_LEAF = {"convert": _keep, "leaf": True}

LIPTRITON_RULES: dict[type, ModuleRule] = {
    LipschitzModule: ModuleRule(constant=_own_bound, convert=_keep, plain=_vanilla, leaf=_no_children),
    ScaledLipschitzModule: ModuleRule(convert=_keep, plain=_vanilla),
    Sequential: ModuleRule(leaf=False),
    _FactorInForward: ModuleRule(constant=lambda m, s, n: (float(m.k_coef_lip), "k_coef_lip"), homogeneous=True,
                       plain=_vanilla, **_LEAF),
    LipResidual: ModuleRule(**_LEAF),  # a convex combination: propagate and export read convex_weights()
    ConvexSum: ModuleRule(**_LEAF),
    BatchLipNorm: ModuleRule(constant=_batch_lip_norm, **_LEAF),
    LayerCentering: const(1.0, "centering is a projection", homogeneous=True, **_LEAF),
    ScaleBiasLayer: ModuleRule(constant=_scale_bias, **_LEAF),
    InvertibleDownSampling: _k_coef("a permutation x k_coef_lip"),
    InvertibleUpSampling: _k_coef("a permutation x k_coef_lip"),
    ScaledL2NormPool2d: ModuleRule(constant=_l2_pool, homogeneous=True),
    ScaledAdaptativeL2NormPool2d: _k_coef("global l2 pooling x k_coef_lip"),
    Scaled: ModuleRule(constant=_scaled, **_LEAF),
    ScaledAdaptivePool: const(1.0, "pooling divided by its Schur / overlap bound", homogeneous=True, **_LEAF),
}
