"""The rules of torch.nn module types (see :mod:`liptriton.rules.registry` for the fields).

One entry per type, in ``TORCH_RULES``; families share a helper. Subclasses inherit their
parent's entry through the MRO (``_BatchNorm`` covers BatchNorm1d/2d/3d and SyncBatchNorm).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from liptriton.bounds.activations import ACTIVATION_CONSTANTS
from liptriton.bounds.pooling import (
    adaptive_windows_bound,
    as_tuple,
    avg_pool_nominal,
    schur_bound,
    window_overlap,
)
from liptriton.rules.registry import KEEP, ModuleRule, const, module_constant

__all__ = ["TORCH_RULES"]

_INF = math.inf


# --- weighted layers: lipschitzify gives them the chosen parametrization ----------------------------------
def _constrain(mod, where, report, ctx):
    if hasattr(mod, "parametrizations"):
        report.change(where, type(mod).__name__, "already parametrized: kept")
        return KEEP
    ctx["method"](mod, k=ctx["layer_k"], **ctx["method_kwargs"])
    report.change(where, type(mod).__name__, f"{ctx['method'].__name__}(k={ctx['layer_k']:.6g})")
    return KEEP


def _plain_layer(mod):
    from torch.nn.utils import parametrize

    from liptriton.nn.padconv import plain_torch_layer

    return plain_torch_layer(mod) if parametrize.is_parametrized(mod) else None


def _dense(mod, shape, nominal):
    w = mod.weight.detach().double()
    return float(torch.linalg.matrix_norm(w, 2)) * (1 + 1e-12), "float64 SVD"


def _conv(mod, shape, nominal):
    from liptriton.bounds.conv_bound import WARM_START, conv_norm_bound
    from liptriton.bounds.conv_operator import ConvSpec

    if shape is None:
        return _INF, "input size unknown"
    size = tuple(shape[2:])
    warm = mod.__dict__.get(WARM_START)  # certify's baked copy: the layer's certified state (a start only)
    res = conv_norm_bound(ConvSpec.from_module(mod), mod.weight, size,
                          warm=warm[1] if warm is not None and tuple(warm[0]) == size else None)
    return res.bound, f"{res.method} operator bound at {size}"


_WEIGHTED = {"convert": _constrain, "plain": _plain_layer, "constrained": True}


# --- activations -------------------------------------------------------------------------------------------
def _convert_activation(mod, where, report, ctx):
    """Constant c > 1: scale by 1/c or replace by GroupSort2 (``activations``); inf: reported."""
    from liptriton.nn.activations import GroupSort2
    from liptriton.nn.inserted import Scaled

    c, _ = module_constant(mod, None, True)
    name = type(mod).__name__
    if math.isinf(c):
        report.block(where, f"{name} is discontinuous")
        return KEEP
    if c <= 1 or ctx["activations"] == "keep":
        return KEEP
    if ctx["activations"] == "groupsort":
        report.change(where, name, f"GroupSort2 (constant {c:.4g} > 1)")
        return GroupSort2()
    report.change(where, name, f"scaled by 1/{c:.6g}")
    return Scaled(mod, 1.0 / c)


def _activation(c: float, homogeneous: bool = False) -> ModuleRule:
    return const(c, "max |f'|", convert=_convert_activation, homogeneous=homogeneous)


def _threshold(mod, shape, nominal):
    if mod.value != mod.threshold:
        return _INF, "a jump (value != threshold): discontinuous"
    return 1.0, "continuous threshold (= max(x, t))"


_HOMOGENEOUS_ACTIVATIONS = (nn.ReLU, nn.Identity, nn.Flatten, nn.Unflatten)


# --- normalization, dropout --------------------------------------------------------------------------------
def _batchnorm(mod, shape, nominal):
    if mod.training or mod.running_var is None:
        return _INF, "batch statistics (not an eval-mode affine map)"
    scale = 1.0 / torch.sqrt(mod.running_var.double() + mod.eps)
    if mod.weight is not None:
        scale = scale * mod.weight.detach().double().abs()
    return float(scale.max()), "max |gamma| / sqrt(var + eps)"


def _convert_batchnorm(mod, where, report, ctx):
    name = type(mod).__name__
    if ctx["batchnorm"] == "error":
        report.block(where, f"{name} (batchnorm='error'; use 'fold' or 'remove')")
        return KEEP
    report.change(where, name, "removed (Identity): no Linear/Conv to fold into" if ctx["batchnorm"] == "fold"
                  else "removed (Identity)")
    return nn.Identity()


def _no_bound(what: str) -> ModuleRule:
    def convert(mod, where, report, ctx):
        report.block(where, f"{type(mod).__name__} {what}")
        return KEEP

    return ModuleRule(constant=lambda m, shape, nominal: (_INF, f"{type(m).__name__} {what}"), convert=convert)


_DATA_NORM = _no_bound("divides by a data-dependent norm: no finite global bound; use BatchLipNorm / "
                       "LayerCentering")


def _convert_dropout(mod, where, report, ctx):
    if ctx["dropout"] == "remove":
        report.change(where, type(mod).__name__, "removed (Identity)")
        return nn.Identity()
    report.change(where, type(mod).__name__, "kept: identity in eval (the training forward scales by 1/(1-p))")
    return KEEP


def _convert_stochastic_depth(mod, where, report, ctx):
    if ctx["dropout"] == "remove":
        report.change(where, type(mod).__name__, "removed (Identity)")
        return nn.Identity()
    report.change(where, type(mod).__name__,
                  "kept: identity in eval (in training it drops residual branches per sample, like dropout)")
    return KEEP


# --- pooling -----------------------------------------------------------------------------------------------
def _max_pool(nd: int) -> ModuleRule:
    def constant(mod, shape, nominal):
        return math.sqrt(window_overlap(mod.kernel_size, mod.stride, mod.dilation, nd)), "overlap"

    def convert(mod, where, report, ctx):
        from liptriton.nn.inserted import Scaled

        c = constant(mod, None, True)[0]
        if c > 1 and ctx["maxpool"] == "scale":
            report.change(where, type(mod).__name__, f"overlapping windows: scaled by 1/{c:.4g}")
            return Scaled(mod, 1.0 / c)
        return KEEP

    return ModuleRule(constant=constant, convert=convert, homogeneous=True)


def _lp_pool(nd: int) -> ModuleRule:
    def constant(mod, shape, nominal):
        if float(mod.norm_type) != 2.0:
            return None
        return math.sqrt(window_overlap(mod.kernel_size, mod.stride, 1, nd)), "overlap (l2 pooling)"

    return ModuleRule(constant=constant, homogeneous=True)


def _avg_pool(nd: int) -> ModuleRule:
    def constant(mod, shape, nominal):
        if shape is None:
            return avg_pool_nominal(mod, nd), "Schur (size-free)"
        return schur_bound(mod, shape), f"Schur at {tuple(shape[2:])}"

    def convert(mod, where, report, ctx):
        from liptriton.nn import pooling as lp
        from liptriton.nn.inserted import Scaled

        name = type(mod).__name__
        k = as_tuple(mod.kernel_size, nd)
        stride = as_tuple(mod.stride if mod.stride else mod.kernel_size, nd)
        padded = any(as_tuple(mod.padding, nd))
        simple = k == stride and not padded and not mod.ceil_mode and getattr(mod, "divisor_override", None) is None
        if ctx["pooling"] == "keep":
            return KEEP
        if ctx["pooling"] == "l2" and not padded:  # LPPool has no padding
            if nd == 2 and simple:
                report.change(where, name, "ScaledL2NormPool2d")
                return lp.ScaledL2NormPool2d(k, stride)
            pool = (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d)[nd - 1](2, k, stride, mod.ceil_mode)
            c = math.sqrt(window_overlap(k, stride, 1, nd))
            report.change(where, name, f"l2-norm pooling scaled by 1/{c:.4g}")
            return Scaled(pool, 1.0 / c)
        if nd == 2 and simple:
            report.change(where, name, "ScaledAvgPool2d (sqrt(window) * mean)")
            return lp.ScaledAvgPool2d(k, stride, count_include_pad=mod.count_include_pad)
        c = avg_pool_nominal(mod, nd)
        report.change(where, name, f"scaled by 1/{c:.6g} (Schur bound)")
        return Scaled(mod, 1.0 / c)

    return ModuleRule(constant=constant, convert=convert, homogeneous=True)


def _adaptive(nd: int, average: bool) -> ModuleRule:
    def constant(mod, shape, nominal):
        if shape is None:
            return _INF, "input size unknown"
        if average:
            return schur_bound(mod, shape), f"Schur at {tuple(shape[2:])}"
        return adaptive_windows_bound(tuple(shape[-nd:]), as_tuple(mod.output_size, nd), False), "overlap"

    def convert(mod, where, report, ctx):
        from liptriton.nn import pooling as lp
        from liptriton.nn.inserted import ScaledAdaptivePool

        name = type(mod).__name__
        unit = all(o == 1 for o in as_tuple(mod.output_size, nd))
        if nd == 2 and unit and average and ctx["pooling"] == "l2":
            report.change(where, name, "ScaledAdaptativeL2NormPool2d")
            return lp.ScaledAdaptativeL2NormPool2d()
        if nd == 2 and unit and average:
            report.change(where, name, "ScaledAdaptiveAvgPool2d (sqrt(H W) * mean)")
            return lp.ScaledAdaptiveAvgPool2d(1)
        report.change(where, name, "divided by its norm bound at the input size (ScaledAdaptivePool)")
        return ScaledAdaptivePool(mod)

    return ModuleRule(constant=constant, convert=convert, homogeneous=True)


_PERMUTATION = const(1.0, "a permutation", homogeneous=True)
_CONSTANT_PAD = const(1.0, "padding by a constant (an isometric embedding plus a constant)")

TORCH_RULES: dict[type, ModuleRule] = {
    nn.Linear: ModuleRule(constant=_dense, **_WEIGHTED),
    nn.modules.conv._ConvNd: ModuleRule(constant=_conv, **_WEIGHTED),
    **{cls: _activation(c, cls in _HOMOGENEOUS_ACTIVATIONS) for cls, c in ACTIVATION_CONSTANTS.items()},
    nn.LeakyReLU: ModuleRule(constant=lambda m, s, n: (max(1.0, abs(m.negative_slope)), "max(1, |slope|)"),
                             convert=_convert_activation, homogeneous=True),
    nn.ELU: ModuleRule(constant=lambda m, s, n: (max(1.0, abs(float(m.alpha))), "max(1, |alpha|)"),
                       convert=_convert_activation),
    nn.PReLU: ModuleRule(constant=lambda m, s, n: (max(1.0, float(m.weight.detach().abs().max())),
                                                   "max(1, |slope|)"), convert=_convert_activation, homogeneous=True),
    nn.Threshold: ModuleRule(constant=_threshold, convert=_convert_activation),
    nn.Softmax: const(1.0, "softmax is 1-Lipschitz", convert=lambda *a: KEEP),
    nn.modules.dropout._DropoutNd: const(1.0, "identity in eval", convert=_convert_dropout),
    nn.Dropout: ModuleRule(homogeneous=True), nn.Dropout1d: ModuleRule(homogeneous=True),
    nn.Dropout2d: ModuleRule(homogeneous=True), nn.Dropout3d: ModuleRule(homogeneous=True),
    nn.modules.batchnorm._BatchNorm: ModuleRule(constant=_batchnorm, convert=_convert_batchnorm),
    nn.LayerNorm: _DATA_NORM, nn.GroupNorm: _DATA_NORM, nn.modules.instancenorm._InstanceNorm: _DATA_NORM,
    nn.LocalResponseNorm: _DATA_NORM,
    nn.MultiheadAttention: _no_bound("(softmax attention) has no finite global Lipschitz bound"),
    nn.MaxPool1d: _max_pool(1), nn.MaxPool2d: _max_pool(2), nn.MaxPool3d: _max_pool(3),
    nn.LPPool1d: _lp_pool(1), nn.LPPool2d: _lp_pool(2), nn.LPPool3d: _lp_pool(3),
    nn.AvgPool1d: _avg_pool(1), nn.AvgPool2d: _avg_pool(2), nn.AvgPool3d: _avg_pool(3),
    nn.AdaptiveAvgPool1d: _adaptive(1, True), nn.AdaptiveAvgPool2d: _adaptive(2, True),
    nn.AdaptiveAvgPool3d: _adaptive(3, True), nn.AdaptiveMaxPool1d: _adaptive(1, False),
    nn.AdaptiveMaxPool2d: _adaptive(2, False), nn.AdaptiveMaxPool3d: _adaptive(3, False),
    nn.PixelShuffle: _PERMUTATION, nn.PixelUnshuffle: _PERMUTATION,
    nn.modules.padding._ConstantPadNd: _CONSTANT_PAD,
    nn.ZeroPad1d: ModuleRule(homogeneous=True), nn.ZeroPad2d: ModuleRule(homogeneous=True),
    nn.ZeroPad3d: ModuleRule(homogeneous=True),
}

# Classes of optional packages, by import path (bound to the class when the user imports the package).
OPTIONAL_TORCH_RULES: dict[str, ModuleRule] = {
    # identity in eval; in training a per-sample scaling by 0 or 1/(1-p), like dropout. A leaf: traced
    # through, its ``self.training`` would be frozen into the graph.
    "torchvision.ops.stochastic_depth.StochasticDepth": const(
        1.0, "stochastic depth: identity in eval", convert=_convert_stochastic_depth, leaf=True),
}
