"""Classes of deel-torchlip 1.0.5 against liptriton's, on fresh random inputs.

Same constructor arguments for both; liptriton's module gets deel-torchlip's tensors
(``load_state_dict``); then equal outputs and gradients (input and parameters) in training and
in eval mode, or, where liptriton differs on purpose, the documented difference
(docs/guide.md, "Migrating from deel-torchlip")."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import liptriton
from tests._deel import assert_same, module_outputs
from tests._measure import OperatorNorm, dense_singular_values, plain_conv
from tests._tolerances import BOUND_SLACK

deel = pytest.importorskip("deel.torchlip")


def _sync(ours: nn.Module, theirs: nn.Module) -> None:
    """Give ``ours`` deel-torchlip's tensors (every name they share; at least one when deel has any)."""
    mine = ours.state_dict()
    shared = {k: v for k, v in theirs.state_dict().items() if k in mine and mine[k].shape == v.shape}
    assert len(shared) > 0 or len(theirs.state_dict()) == 0
    ours.load_state_dict(shared, strict=False)


# name -> (constructor args, constructor kwargs, input shape); same math, equal results
SAME = {
    "MaxMin": ((), {}, (4, 3, 5)),
    "GroupSort": ((4,), {}, (5, 8, 3)),
    "GroupSort2": ((), {"k_coef_lip": 2.0}, (5, 6)),
    "FullSort": ((), {}, (5, 7)),
    "LPReLU": ((3,), {"init": 0.4}, (4, 3, 5)),
    "HouseHolder": ((6,), {}, (4, 6, 3)),
    "ScaledAvgPool2d": ((2,), {"k_coef_lip": 1.5}, (2, 3, 6, 6)),
    "ScaledL2NormPool2d": ((2,), {}, (2, 3, 6, 6)),
    "ScaledAdaptiveAvgPool2d": (((1, 1),), {}, (2, 3, 5, 5)),
    "ScaledAdaptativeL2NormPool2d": ((), {}, (2, 3, 5, 5)),
    "InvertibleDownSampling": ((2,), {}, (2, 3, 6, 6)),
    "InvertibleUpSampling": ((2,), {}, (2, 8, 3, 3)),
    "LayerCentering": ((3,), {}, (4, 3, 5, 5)),
    "BatchCentering": ((3,), {}, (6, 3, 4, 4)),
    "BatchLipNorm": ((3,), {}, (6, 3, 4, 4)),
    "ScaleBiasLayer": ((), {"scalar": 0.7, "num_features": 3}, (4, 3, 5)),
    "PadConv1d": ((2, 3, 3), {"padding": 2, "padding_mode": "symmetric"}, (2, 2, 9)),
    "PadConv2d": ((2, 3, 3), {"padding": 1, "padding_mode": "reflect", "stride": 2}, (2, 2, 8, 7)),
    "FrobeniusLinear": ((6, 3), {"k_coef_lip": 2.0}, (5, 6)),
    "FrobeniusConv2d": ((3, 4, 3), {"padding": 1}, (2, 3, 6, 6)),
}


@pytest.mark.parametrize("name", sorted(SAME))
def test_same_outputs_and_gradients(name):
    args, kwargs, shape = SAME[name]
    theirs = getattr(deel, name, None) or getattr(deel.modules, name)
    theirs = theirs(*args, **kwargs)
    ours = getattr(liptriton, name)(*args, **kwargs)
    _sync(ours, theirs)
    for _ in range(2):  # two training batches (running statistics), then eval
        x = torch.randn(*shape)
        assert_same(module_outputs(ours, x, True), module_outputs(theirs, x, True))
    x = torch.randn(*shape)
    assert_same(module_outputs(ours, x, False), module_outputs(theirs, x, False))


def test_lip_residual_same_outputs_and_gradients():
    ours, theirs = liptriton.LipResidual(), deel.modules.LipResidual()
    with torch.no_grad():
        theirs.alpha.fill_(0.3)
    _sync(ours, theirs)
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(ours(x, y), theirs(x, y))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular", "symmetric"])
def test_pad_conv_every_padding_mode_and_export(mode):
    for cls, shape in (("PadConv1d", (2, 2, 9)), ("PadConv2d", (2, 2, 7, 9))):
        theirs = getattr(deel.modules, cls)(2, 3, 3, padding=2, padding_mode=mode)
        ours = getattr(liptriton, cls)(2, 3, 3, padding=2, padding_mode=mode)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(*shape)
        torch.testing.assert_close(ours(x), theirs(x))
        torch.testing.assert_close(ours.vanilla_export()(x), theirs(x))


LOSSES = {
    "KRLoss": ((), {}, "pm1"),
    "NegKRLoss": ((), {"reduction": "sum"}, "pm1"),
    "HingeMarginLoss": ((0.5,), {}, "pm1"),
    "HKRLoss": ((0.9,), {"min_margin": 0.5}, "pm1"),
    "KRMulticlassLoss": ((), {}, "onehot"),
    "HingeMulticlassLoss": ((0.7,), {}, "onehot"),
    "HKRMulticlassLoss": ((0.8,), {"min_margin": 0.4}, "onehot"),
    "SoftHKRMulticlassLoss": ((), {"alpha": 0.9, "temperature": 2.0}, "onehot"),
    "LseHKRMulticlassLoss": ((), {"alpha": 0.7, "temperature": 2.0}, "onehot"),
    "CategoricalHingeLoss": ((0.8,), {}, "onehot"),
    "TauCrossEntropyLoss": ((3.0,), {}, "index"),
    "TauBCEWithLogitsLoss": ((2.0,), {}, "01"),
}


def _target(kind: str, n: int, c: int) -> torch.Tensor:
    if kind == "pm1":
        return (torch.arange(n) % 2).float().view(-1, 1)[torch.randperm(n)] * 2 - 1
    if kind == "onehot":
        return nn.functional.one_hot(torch.arange(n) % c, c).float()[torch.randperm(n)]
    if kind == "index":
        return torch.randint(0, c, (n,))
    return torch.randint(0, 2, (n, c)).float()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_same_values_and_gradients(name):
    args, kwargs, kind = LOSSES[name]
    ours, theirs = getattr(liptriton, name)(*args, **kwargs), getattr(deel.modules, name)(*args, **kwargs)
    c = 1 if kind == "pm1" else 4
    for _ in range(3):  # SoftHKR keeps a running mean across calls
        x, t = torch.randn(10, c, requires_grad=True), _target(kind, 10, c)
        a, b = ours(x, t), theirs(x, t)
        (ga,), (gb,) = torch.autograd.grad(a, x), torch.autograd.grad(b, x)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


def _conv_norm(layer: nn.Module, shape: tuple[int, ...]) -> float:
    with torch.no_grad():
        weight = layer.eval().weight
    if isinstance(layer, nn.Linear):
        return float(dense_singular_values(weight)[0])
    return OperatorNorm(shape, first=200)(plain_conv(layer, weight))


SPECTRAL = {
    "SpectralLinear": ((12, 8), (12,)),
    "SpectralConv1d": ((3, 4, 3), (3, 10)),
    "SpectralConv2d": ((4, 4, 3), (4, 8, 8)),
    "SpectralConvTranspose2d": ((4, 2, 2), (4, 5, 5)),
}


@pytest.mark.parametrize("name", sorted(SPECTRAL))
def test_spectral_layers_reach_k_where_deel_stays_below(name):
    # documented difference: the same orthogonalized kernel direction; liptriton divides by the
    # norm of the layer's own operator, so the layer is exactly k-Lipschitz (deel-torchlip's
    # coercive factor leaves convolutions below k)
    args, shape = SPECTRAL[name]
    k = 1.5
    kwargs = {"padding": 1} if "Conv" in name and "Trans" not in name else {}
    theirs = getattr(deel.modules, name)(*args, k_coef_lip=k, **kwargs)
    ours = getattr(liptriton, name)(*args, k_coef_lip=k, **kwargs)
    ours(torch.randn(2, *shape))
    theirs(torch.randn(2, *shape))
    n_ours, n_theirs = _conv_norm(ours, shape), _conv_norm(theirs, shape)
    assert k * 0.99 <= n_ours <= k * (1 + BOUND_SLACK)
    assert n_theirs <= n_ours * (1 + 1e-2)
    if name == "SpectralLinear":  # dense: both orthogonal times k
        assert abs(n_theirs - k) < 1e-2
    else:
        assert n_theirs < 0.97 * n_ours


def test_frobenius_conv2d_with_copying_padding_stays_k_lipschitz():
    # documented difference: deel-torchlip's reflect-padded FrobeniusConv2d divides by
    # sqrt(kh kw) only and can exceed k; liptriton counts the reads of the mirrored copies
    shape = (1, 8, 8)
    w = torch.ones(1, 1, 3, 3) + 0.01 * torch.randn(1, 1, 3, 3)  # a smoothing kernel (deel: 1.06 k)
    theirs = deel.modules.FrobeniusConv2d(1, 1, 3, padding=1, padding_mode="reflect", bias=False)
    ours = liptriton.FrobeniusConv2d(1, 1, 3, padding=1, padding_mode="reflect", bias=False)
    for m in (theirs, ours):
        m.parametrizations.weight.original.data.copy_(w)

    def padded(layer):  # the real operator: numpy's reflect index map, then a valid conv, float64
        def f(x):
            return nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"),
                                        layer.weight.detach().double())
        return f

    n_theirs = OperatorNorm(shape, first=200)(padded(theirs))
    assert n_theirs > 1 + 1e-2
    for size in (3, 4, 8, 11):  # any input size (3: the most reads of a border element)
        assert OperatorNorm((1, size, size), first=200)(padded(ours)) <= 1 + BOUND_SLACK
    ratio = float(ours.weight.detach().norm() / theirs.weight.detach().norm())
    reads = liptriton.bounds.conv_reads.max_reads((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), "reflect")
    assert ratio == pytest.approx(math.sqrt(9 / reads), rel=1e-5)


def test_sequential_k_coef_lip_reaches_the_layers():
    # documented difference: deel-torchlip sets the factor on the attribute only, so its spectral
    # layers stay 1-Lipschitz; liptriton's network is k-Lipschitz
    k = 4.0
    ours = liptriton.Sequential(liptriton.SpectralLinear(6, 6), liptriton.SpectralLinear(6, 2), k_coef_lip=k)
    theirs = deel.Sequential(deel.SpectralLinear(6, 6), deel.SpectralLinear(6, 2), k_coef_lip=k)
    for net in (ours, theirs):
        assert [m._coefficient_lip for m in net] == pytest.approx([2.0, 2.0])
    x = torch.randn(3, 6)
    ours(x), theirs(x)
    assert float(dense_singular_values(ours.eval()[0].weight)[0]) == pytest.approx(2.0, rel=1e-3)
    assert float(dense_singular_values(theirs.eval()[0].weight)[0]) == pytest.approx(1.0, rel=1e-2)


def test_vanilla_model_keeps_the_outputs_of_both():
    def net(lib):
        return nn.Sequential(lib.SpectralConv2d(2, 4, 3, padding=1), lib.GroupSort2(),
                             lib.ScaledL2NormPool2d(2), nn.Flatten(),
                             lib.FrobeniusLinear(4 * 9, 3, disjoint_neurons=False))
    x = torch.randn(2, 2, 6, 6)
    for lib in (liptriton, deel):
        model = net(lib)
        model(x)
        expected = model.eval()(x)
        plain = lib.vanilla_model(model, in_place=False)
        assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.modules())
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)


def test_scaling_factors_and_shared_factory_as_deel():
    for lib in (liptriton, deel.modules):
        factory = lib.SharedLipFactory()
        bns = [lib.BatchLipNorm(3, factory=factory) for _ in range(2)]
        for bn in bns:
            bn.train()(torch.randn(8, 3, 4, 4) * 3)
        product = factory.get_current_product_value(training=True)
        expected = bns[0].get_scaling_factor(training=True) * bns[1].get_scaling_factor(training=True)
        torch.testing.assert_close(product.reshape(()), expected.reshape(()))
    with pytest.raises(ValueError, match="factory must be None"):
        liptriton.LipschitzModule(1.0, liptriton.SharedLipFactory())
    for lib in (liptriton, deel.modules):
        assert isinstance(lib.GroupSort2(), lib.ScaledLipschitzModule)
        assert float(lib.SpectralLinear(2, 2, k_coef_lip=3.0).get_scaling()) == 3.0
        torch.testing.assert_close(torch.as_tensor(lib.GroupSort2().get_scaling_factor()), torch.ones(1))
    scaled = [liptriton.SpectralLinear(2, 2, k_coef_lip=2.0), liptriton.GroupSort2(k_coef_lip=3.0)]
    assert [float(m.get_scaling_factor()) for m in scaled] == [2.0, 3.0]
    # deel-torchlip's factory cannot stack a LipschitzModule's float factor
    factory = liptriton.SharedLipFactory()
    factory.register(liptriton.SpectralLinear(2, 2, k_coef_lip=2.0))
    factory.register(liptriton.BatchLipNorm(2))  # no statistics yet: factor 1
    assert float(factory.get_current_product_value(training=False)) == pytest.approx(2.0)


def test_a_deel_checkpoint_loads_with_strict_false():
    theirs = nn.Sequential(deel.SpectralLinear(6, 4), deel.GroupSort2(), deel.SpectralLinear(4, 2))
    opt = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for _ in range(2):
        theirs(torch.randn(4, 6)).square().sum().backward()
        opt.step()
    ours = nn.Sequential(liptriton.SpectralLinear(6, 4), liptriton.GroupSort2(),
                         liptriton.SpectralLinear(4, 2))
    result = ours.load_state_dict(theirs.state_dict(), strict=False)
    assert all("._u" in k or "._v" in k or "_w_bjorck" in k for k in result.unexpected_keys)
    x = torch.randn(3, 6)
    theirs.train()(x)  # deel-torchlip's eval reuses the Björck weight of its last training forward
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=5e-3)


@pytest.mark.parametrize(("name", "kwargs"), [("ScaledAvgPool2d", {"ceil_mode": True}),
                                              ("ScaledAvgPool2d", {"divisor_override": 2}),
                                              ("ScaledAvgPool2d", {"divisor_override": 9}),
                                              ("ScaledL2NormPool2d", {"ceil_mode": True})])
def test_pooling_arguments_deel_accepts_keep_the_bound(name, kwargs):
    # documented difference: deel-torchlip divides a partial ceil_mode window of m elements by m
    # (sqrt(kh kw / m)-Lipschitz) and honours a divisor below kh kw (kh kw / d-Lipschitz); here
    # every window is divided as a full one: equal outputs on full windows, the bound holds
    ours, theirs = getattr(liptriton, name)(2, **kwargs), getattr(deel.modules, name)(2, **kwargs)
    x = torch.randn(3, 2, 7, 7)
    a, b = ours(x), theirs(x)
    assert a.shape == b.shape
    full = slice(0, 3)  # the windows that fit in 7 x 7
    d = kwargs.get("divisor_override") or 4
    scale = min(1.0, d / 4) if name == "ScaledAvgPool2d" else 1.0
    torch.testing.assert_close(a[..., full, full], b[..., full, full] * scale)
    if kwargs.get("ceil_mode"):  # partial windows: deel's output is larger by sqrt(4 / m) (m = 2, 1)
        assert (a[..., 3, :3].abs() <= b[..., 3, :3].abs() + 1e-6).all()
    lip = liptriton.utils.evaluate_lip_const(ours, x, "all", num_iterations=20, seed=0)
    assert lip <= 1 + 1e-3
    if kwargs.get("ceil_mode") or d < 4:
        assert deel.utils.evaluate_lip_const(theirs, x, "jacobian_norm") > 1.2
