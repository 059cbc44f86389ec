"""Containers: Sequential(k_coef_lip=K) makes the network K-Lipschitz (deel-torchlip's does not),
vanilla_export / vanilla_model give plain equal models, LipResidual."""

from __future__ import annotations

import warnings

import pytest
import torch
from _measure import OperatorNorm, dense_singular_values, plain_conv
from _tolerances import BOUND_SLACK, assert_close
from torch import nn
from torch.nn.utils import parametrize

import liptriton


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def jacobian_norm(model: nn.Module, x0: torch.Tensor, steps: int = 100) -> float:
    """Largest singular value of the Jacobian of ``model`` at ``x0`` (power iteration, jvp/vjp by
    autograd): a lower bound of the Lipschitz constant, equal to it for orthogonal layers and
    GroupSort."""
    v = torch.randn_like(x0)
    for _ in range(steps):
        v = v / v.norm()
        _, jv = torch.autograd.functional.jvp(model, x0, v)
        _, v = torch.autograd.functional.vjp(model, x0, jv)
    v = v / v.norm()
    return float(torch.autograd.functional.jvp(model, x0, v)[1].norm())


def _dense_net(module, k_coef_lip):
    return module.Sequential(module.SpectralLinear(6, 6), module.GroupSort2(), module.SpectralLinear(6, 6),
                             k_coef_lip=k_coef_lip)


def test_sequential_k_coef_lip_is_reached_unlike_deel():
    ours = _dense_net(liptriton, 4.0).eval()
    share = 4.0 ** (1 / 3)
    assert [m.k_coef_lip for m in ours] == pytest.approx([share] * 3)
    per_layer = [float(dense_singular_values(ours[0].weight)[0]), share, float(dense_singular_values(ours[2].weight)[0])]
    product = per_layer[0] * per_layer[1] * per_layer[2]
    assert product <= 4.0 * (1 + BOUND_SLACK)  # upper bound: product of measured per-layer norms
    assert jacobian_norm(ours, torch.randn(1, 6)) == pytest.approx(4.0, rel=1e-2)  # reached
    assert ours.lipschitz_bound() == pytest.approx(4.0)
    torchlip = pytest.importorskip("deel.torchlip")
    deel = _dense_net(torchlip, 4.0).eval()
    assert jacobian_norm(deel, torch.randn(1, 6)) < 2.0  # only its activation was scaled: 4 ** (1/3)


def test_sequential_conv_net_bound_after_training():
    net = liptriton.Sequential(
        liptriton.SpectralConv2d(2, 4, 3, padding=1), liptriton.GroupSort2(), liptriton.ScaledAvgPool2d(2),
        nn.Flatten(), liptriton.SpectralLinear(64, 8), liptriton.MaxMin(), liptriton.FrobeniusLinear(16, 1),
        k_coef_lip=2.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(10):
        y = net(torch.randn(8, 2, 8, 8))
        loss = (y * torch.randn_like(y)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    share = 2.0 ** (1 / 6)
    conv = OperatorNorm((2, 8, 8))(plain_conv(net[0], net[0].weight))
    lin = float(dense_singular_values(net[4].weight)[0])
    fro = float(dense_singular_values(net[6].weight)[0])
    # GroupSort2, ScaledAvgPool2d (non-overlapping), MaxMin: exactly their factor (tested elsewhere)
    bound = conv * share * share * lin * share * fro
    assert bound <= 2.0 * (1 + BOUND_SLACK)
    assert bound >= 0.99 * 2.0
    assert jacobian_norm(net, torch.randn(1, 2, 8, 8), steps=50) <= bound * (1 + 1e-6)


def test_nested_sequential_redistributes():
    inner = liptriton.Sequential(liptriton.SpectralLinear(4, 4), liptriton.SpectralLinear(4, 4))
    outer = liptriton.Sequential(inner, liptriton.SpectralLinear(4, 4), k_coef_lip=9.0)
    assert inner.k_coef_lip == pytest.approx(3.0)
    assert inner[0].k_coef_lip == pytest.approx(3.0 ** 0.5)
    assert outer.lipschitz_bound() == pytest.approx(9.0)


def test_sequential_warns_and_errors():
    with pytest.warns(UserWarning, match="not a known Lipschitz layer"):
        liptriton.Sequential(liptriton.SpectralLinear(2, 2), nn.Linear(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        liptriton.Sequential(liptriton.SpectralLinear(2, 2), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
                             liptriton.LayerCentering(1))
    with pytest.raises(ValueError, match="Sequential: k_coef_lip"):
        liptriton.Sequential(nn.ReLU(), k_coef_lip=2.0)
    with pytest.raises(ValueError, match="Sequential: k_coef_lip"):
        liptriton.Sequential(liptriton.SpectralLinear(2, 2), k_coef_lip=float("nan"))


def _mixed_model():
    return nn.Sequential(
        liptriton.Sequential(liptriton.SpectralConv2d(1, 4, 3, padding=1, padding_mode="symmetric"),
                             liptriton.GroupSort2(), liptriton.ScaledL2NormPool2d(2)),
        nn.Sequential(liptriton.SpectralConv2d(4, 4, 3, stride=2, padding=1), liptriton.LPReLU(4)),
        liptriton.SpectralConvTranspose2d(4, 2, 2, stride=2),
        liptriton.InvertibleDownSampling(2),
        nn.Flatten(),
        liptriton.bjorck(nn.Linear(32, 5)),  # a generic parametrized torch layer
        liptriton.FrobeniusLinear(5, 1),
    )


def test_vanilla_model_and_export_plain_and_equal():
    model = _mixed_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = model(torch.randn(4, 1, 8, 8)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
        copy = liptriton.vanilla_model(model, in_place=False)
        assert parametrize.is_parametrized(model[0][0])  # the original is untouched
        exported_seq = model[0].vanilla_export()
        assert type(exported_seq) is nn.Sequential
        in_place = liptriton.vanilla_model(model)
    for plain in (copy, in_place):
        assert not any(parametrize.is_parametrized(m) for m in plain.modules())
        assert not any(isinstance(m, liptriton.LipschitzModule) for m in plain.modules())
        with torch.no_grad():
            torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    assert isinstance(in_place[5], nn.Linear) and type(in_place[5]) is nn.Linear


def test_lip_residual_equals_deel():
    torchlip = pytest.importorskip("deel.torchlip")
    ours, deel = liptriton.LipResidual(), torchlip.LipResidual()
    with torch.no_grad():
        ours.alpha.fill_(0.3)
    deel.load_state_dict(ours.state_dict())
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    assert_close(ours(x, y), deel(x, y))


def test_exported_names():
    names = ["LipschitzModule", "Sequential", "LipResidual", "vanilla_model", "SpectralLinear", "FrobeniusLinear",
             "SpectralConv1d", "SpectralConv2d", "FrobeniusConv2d", "SpectralConvTranspose2d", "PadConv1d",
             "PadConv2d", "ScaledAvgPool2d", "ScaledL2NormPool2d", "ScaledAdaptiveAvgPool2d",
             "ScaledAdaptativeL2NormPool2d", "InvertibleDownSampling", "InvertibleUpSampling", "LayerCentering",
             "BatchCentering", "BatchLipNorm", "ScaleBiasLayer"]
    assert all(hasattr(liptriton, n) for n in liptriton.__all__)  # what `from liptriton import *` needs
    for name in names:
        assert name in liptriton.__all__ and name in liptriton.nn.__all__
        assert getattr(liptriton, name) is getattr(liptriton.nn, name)
