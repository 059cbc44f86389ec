"""The module-rule registry (liptriton.rules): one rule per type, found by MRO, consistent across uses.

The main check: every module type lipschitzify may keep (or put in) has a finite constant for
certify (measured on the baked eval module) and for lipschitzify's planning, at a real input size.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import liptriton
from liptriton.convert import ConversionReport
from liptriton.nn.inserted import ConvexSum, Scaled, ScaledAdaptivePool
from liptriton.rules import RULES, convert_module, find, is_leaf, module_constant, plain_form

# (constructor, input shape) of one instance of every concrete module type a rule covers
SAMPLES: dict[type, tuple] = {
    nn.Linear: (lambda: nn.Linear(5, 3), (2, 5)),
    nn.Conv1d: (lambda: nn.Conv1d(2, 3, 3, padding=1), (1, 2, 7)),
    nn.Conv2d: (lambda: nn.Conv2d(2, 3, 3, stride=2), (1, 2, 7, 7)),
    nn.Conv3d: (lambda: nn.Conv3d(1, 2, 2), (1, 1, 4, 4, 4)),
    nn.ConvTranspose1d: (lambda: nn.ConvTranspose1d(2, 3, 3), (1, 2, 5)),
    nn.ConvTranspose2d: (lambda: nn.ConvTranspose2d(2, 3, 2, stride=2), (1, 2, 4, 4)),
    nn.ConvTranspose3d: (lambda: nn.ConvTranspose3d(1, 2, 2), (1, 1, 3, 3, 3)),
    nn.CELU: (nn.CELU, (2, 4)), nn.ELU: (lambda: nn.ELU(2.0), (2, 4)), nn.GELU: (nn.GELU, (2, 4)),
    nn.Hardsigmoid: (nn.Hardsigmoid, (2, 4)), nn.Hardswish: (nn.Hardswish, (2, 4)),
    nn.Hardtanh: (nn.Hardtanh, (2, 4)), nn.LeakyReLU: (lambda: nn.LeakyReLU(1.5), (2, 4)),
    nn.LogSigmoid: (nn.LogSigmoid, (2, 4)), nn.Mish: (nn.Mish, (2, 4)), nn.PReLU: (nn.PReLU, (2, 4)),
    nn.ReLU: (nn.ReLU, (2, 4)), nn.ReLU6: (nn.ReLU6, (2, 4)), nn.SELU: (nn.SELU, (2, 4)),
    nn.SiLU: (nn.SiLU, (2, 4)), nn.Sigmoid: (nn.Sigmoid, (2, 4)), nn.Softmax: (lambda: nn.Softmax(1), (2, 4)),
    nn.Softplus: (nn.Softplus, (2, 4)), nn.Softshrink: (nn.Softshrink, (2, 4)), nn.Softsign: (nn.Softsign, (2, 4)),
    nn.Tanh: (nn.Tanh, (2, 4)), nn.Tanhshrink: (nn.Tanhshrink, (2, 4)),
    nn.Threshold: (lambda: nn.Threshold(0.1, 20.0), (2, 4)),
    nn.MultiheadAttention: (lambda: nn.MultiheadAttention(4, 1), (2, 4)),
    nn.BatchNorm1d: (lambda: nn.BatchNorm1d(4), (2, 4)), nn.BatchNorm2d: (lambda: nn.BatchNorm2d(2), (1, 2, 3, 3)),
    nn.BatchNorm3d: (lambda: nn.BatchNorm3d(1), (1, 1, 2, 2, 2)),
    nn.InstanceNorm1d: (lambda: nn.InstanceNorm1d(2), (1, 2, 5)),
    nn.InstanceNorm2d: (lambda: nn.InstanceNorm2d(2), (1, 2, 3, 3)),
    nn.InstanceNorm3d: (lambda: nn.InstanceNorm3d(1), (1, 1, 2, 2, 2)),
    nn.GroupNorm: (lambda: nn.GroupNorm(1, 2), (1, 2, 3)), nn.LayerNorm: (lambda: nn.LayerNorm(4), (2, 4)),
    nn.LocalResponseNorm: (lambda: nn.LocalResponseNorm(2), (1, 2, 3)),
    nn.AlphaDropout: (nn.AlphaDropout, (2, 4)), nn.Dropout: (nn.Dropout, (2, 4)),
    nn.Dropout1d: (nn.Dropout1d, (1, 2, 4)), nn.Dropout2d: (nn.Dropout2d, (1, 2, 3, 3)),
    nn.Dropout3d: (nn.Dropout3d, (1, 1, 2, 2, 2)), nn.FeatureAlphaDropout: (nn.FeatureAlphaDropout, (1, 2, 3, 3)),
    nn.Flatten: (nn.Flatten, (2, 2, 3)), nn.Unflatten: (lambda: nn.Unflatten(1, (2, 2)), (2, 4)),
    nn.Identity: (nn.Identity, (2, 4)),
    nn.ConstantPad1d: (lambda: nn.ConstantPad1d(1, 0.5), (1, 2, 4)),
    nn.ConstantPad2d: (lambda: nn.ConstantPad2d(1, 0.5), (1, 2, 3, 3)),
    nn.ConstantPad3d: (lambda: nn.ConstantPad3d(1, 0.5), (1, 1, 2, 2, 2)),
    nn.ZeroPad1d: (lambda: nn.ZeroPad1d(1), (1, 2, 4)), nn.ZeroPad2d: (lambda: nn.ZeroPad2d(1), (1, 2, 3, 3)),
    nn.ZeroPad3d: (lambda: nn.ZeroPad3d(1), (1, 1, 2, 2, 2)),
    nn.PixelShuffle: (lambda: nn.PixelShuffle(2), (1, 4, 2, 2)),
    nn.PixelUnshuffle: (lambda: nn.PixelUnshuffle(2), (1, 1, 4, 4)),
    nn.AdaptiveAvgPool1d: (lambda: nn.AdaptiveAvgPool1d(2), (1, 2, 5)),
    nn.AdaptiveAvgPool2d: (lambda: nn.AdaptiveAvgPool2d(1), (1, 2, 4, 4)),
    nn.AdaptiveAvgPool3d: (lambda: nn.AdaptiveAvgPool3d(1), (1, 1, 2, 2, 2)),
    nn.AdaptiveMaxPool1d: (lambda: nn.AdaptiveMaxPool1d(2), (1, 2, 5)),
    nn.AdaptiveMaxPool2d: (lambda: nn.AdaptiveMaxPool2d(2), (1, 2, 5, 5)),
    nn.AdaptiveMaxPool3d: (lambda: nn.AdaptiveMaxPool3d(1), (1, 1, 2, 2, 2)),
    nn.AvgPool1d: (lambda: nn.AvgPool1d(3, 2, padding=1), (1, 2, 7)),
    nn.AvgPool2d: (lambda: nn.AvgPool2d(2), (1, 2, 4, 4)),
    nn.AvgPool3d: (lambda: nn.AvgPool3d(2), (1, 1, 4, 4, 4)),
    nn.LPPool1d: (lambda: nn.LPPool1d(2, 2), (1, 2, 4)), nn.LPPool2d: (lambda: nn.LPPool2d(2, 2), (1, 2, 4, 4)),
    nn.LPPool3d: (lambda: nn.LPPool3d(2, 2), (1, 1, 2, 2, 2)),
    nn.MaxPool1d: (lambda: nn.MaxPool1d(3, 2), (1, 2, 7)), nn.MaxPool2d: (lambda: nn.MaxPool2d(2), (1, 2, 4, 4)),
    nn.MaxPool3d: (lambda: nn.MaxPool3d(2), (1, 1, 4, 4, 4)),
    liptriton.FullSort: (liptriton.FullSort, (2, 4)), liptriton.GroupSort: (lambda: liptriton.GroupSort(2), (2, 4)),
    liptriton.GroupSort2: (liptriton.GroupSort2, (2, 4)), liptriton.MaxMin: (liptriton.MaxMin, (2, 4)),
    liptriton.HouseHolder: (lambda: liptriton.HouseHolder(4), (2, 4)),
    liptriton.LPReLU: (lambda: liptriton.LPReLU(4), (2, 4)),
    liptriton.SpectralLinear: (lambda: liptriton.SpectralLinear(4, 3), (2, 4)),
    liptriton.FrobeniusLinear: (lambda: liptriton.FrobeniusLinear(4, 3), (2, 4)),
    liptriton.SpectralConv1d: (lambda: liptriton.SpectralConv1d(2, 2, 3), (1, 2, 6)),
    liptriton.SpectralConv2d: (lambda: liptriton.SpectralConv2d(2, 2, 3), (1, 2, 5, 5)),
    liptriton.FrobeniusConv2d: (lambda: liptriton.FrobeniusConv2d(2, 2, 3), (1, 2, 5, 5)),
    liptriton.SpectralConvTranspose2d: (lambda: liptriton.SpectralConvTranspose2d(2, 2, 2), (1, 2, 3, 3)),
    liptriton.PadConv1d: (lambda: liptriton.PadConv1d(2, 2, 3, padding=1, padding_mode="symmetric"), (1, 2, 6)),
    liptriton.PadConv2d: (lambda: liptriton.PadConv2d(2, 2, 3, padding=1, padding_mode="symmetric"), (1, 2, 5, 5)),
    liptriton.BatchCentering: (lambda: liptriton.BatchCentering(2).eval(), (2, 2)),
    liptriton.BatchLipNorm: (lambda: liptriton.BatchLipNorm(2).eval(), (2, 2)),
    liptriton.LayerCentering: (lambda: liptriton.LayerCentering(2), (2, 2, 3)),
    liptriton.ScaleBiasLayer: (lambda: liptriton.ScaleBiasLayer(2.0, 3), (2, 3)),
    liptriton.InvertibleDownSampling: (lambda: liptriton.InvertibleDownSampling(2, k_coef_lip=2.0), (1, 1, 4, 4)),
    liptriton.InvertibleUpSampling: (lambda: liptriton.InvertibleUpSampling(2, k_coef_lip=0.5), (1, 4, 2, 2)),
    liptriton.ScaledAdaptativeL2NormPool2d: (liptriton.ScaledAdaptativeL2NormPool2d, (1, 2, 3, 3)),
    liptriton.ScaledAdaptiveAvgPool2d: (lambda: liptriton.ScaledAdaptiveAvgPool2d(1), (1, 2, 3, 3)),
    liptriton.ScaledAvgPool2d: (lambda: liptriton.ScaledAvgPool2d(2), (1, 2, 4, 4)),
    liptriton.ScaledL2NormPool2d: (lambda: liptriton.ScaledL2NormPool2d(2), (1, 2, 4, 4)),
    Scaled: (lambda: Scaled(nn.GELU(), 0.5), (2, 4)),
    ScaledAdaptivePool: (lambda: ScaledAdaptivePool(nn.AdaptiveMaxPool2d(2)), (1, 2, 5, 5)),
}
_CONVEX = (liptriton.LipResidual, ConvexSum)  # two inputs: propagate reads their convex_weights()
_NOT_LEAVES = (liptriton.Sequential,)  # containers: traced through
_SKIP = ("Lazy", "SyncBatchNorm", "NonDynamicallyQuantizable")  # uninitialized / distributed-only / internal


def _concrete_types() -> set[type]:
    seen: set[type] = set()

    def walk(cls):
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                walk(sub)

    for cls in RULES:
        seen.add(cls)
        walk(cls)
    return {c for c in seen if issubclass(c, nn.Module) and not c.__name__.startswith(("_", "Parametrized"))
            and c.__module__.startswith(("torch.nn", "liptriton")) and not any(s in c.__name__ for s in _SKIP)}


def test_every_covered_type_has_a_sample():
    missing = sorted(c.__name__ for c in _concrete_types() - set(SAMPLES) - set(_CONVEX) - set(_NOT_LEAVES))
    assert not missing, f"add a sample for {missing}"


_OPTIONS = [
    {},
    {"activations": "groupsort", "pooling": "l2", "dropout": "remove", "batchnorm": "remove"},
    {"activations": "keep", "pooling": "keep", "maxpool": "keep"},
]


@pytest.mark.parametrize("options", _OPTIONS, ids=["defaults", "replace", "keep"])
def test_every_type_lipschitzify_keeps_has_a_certify_rule(options):
    """Each module lipschitzify keeps or puts in its place is bounded by certify's and planning's rules."""
    torch.manual_seed(0)
    for cls, (make, shape) in SAMPLES.items():
        report = ConversionReport()
        ctx = {"batchnorm": "fold", "pooling": "scaled", "activations": "scale", "maxpool": "scale",
               "dropout": "keep", "residual": "convex", "method": liptriton.bjorck, "method_kwargs": {},
               "layer_k": 1.0, **options}
        mod = make()
        new = convert_module(mod, "m", report, ctx)
        kept = (mod if new is None else new).eval()
        if report.blockers:
            assert math.isinf(module_constant(kept, shape, nominal=False)[0]), (cls, report.blockers)
            continue
        x = torch.randn(shape)
        kept(x)  # conv states learn the input size
        planned, why = module_constant(kept, shape, nominal=True)
        assert math.isfinite(planned), (cls, why)
        baked = liptriton.bake(kept).double()
        certified, why = module_constant(baked, shape, nominal=False)
        assert math.isfinite(certified), (cls, why)
        # and the rule is an upper bound: a random secant of the baked module stays below it
        x, y = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64) * 1e-3
        with torch.no_grad():
            ratio = float((baked(x + y) - baked(x)).norm() / y.norm())
        assert ratio <= certified * (1 + 1e-6), (cls, ratio, certified)


def test_rules_are_found_by_mro_not_by_name():
    class MyGroupSort(liptriton.GroupSort2):  # a user subclass inherits the rule
        pass

    class GELU(nn.Module):  # a user class named like a torch one gets no rule
        def forward(self, x):
            return x * 3

    assert find(MyGroupSort()) is find(liptriton.GroupSort2()) is not None
    assert is_leaf(MyGroupSort()) and module_constant(MyGroupSort(k_coef_lip=3.0), None, False)[0] == 3.0
    assert find(GELU()) is None and math.isinf(module_constant(GELU(), None, False)[0])
    assert math.isfinite(module_constant(nn.FeatureAlphaDropout(), None, False)[0])


def test_plain_form_by_rule():
    lin = liptriton.bjorck(nn.Linear(4, 3)).eval()  # converged once, at the switch to eval
    plain = plain_form(lin)
    with torch.no_grad():  # the eval weight, as cached by that convergence
        assert type(plain) is nn.Linear and torch.equal(plain.weight, lin.weight)
    assert plain_form(nn.Linear(2, 2)) is None and plain_form(nn.ReLU()) is None
    assert type(plain_form(liptriton.SpectralConv2d(2, 2, 3))) is nn.Conv2d
