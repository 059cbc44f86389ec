"""Pooling and normalization layers: same outputs as deel-torchlip, Lipschitz constant k, errors, export."""

from __future__ import annotations

import copy

import pytest
import torch
from _measure import OperatorNorm
from _tolerances import BOUND_SLACK, assert_close
from torch import nn

import liptriton

torchlip = pytest.importorskip("deel.torchlip")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name -> (ours, deel's, input shape)
POOLS = {
    "avg2": (lambda: liptriton.ScaledAvgPool2d(2), lambda: torchlip.ScaledAvgPool2d(2), (2, 3, 6, 8)),
    "avg_2x3_k2": (lambda: liptriton.ScaledAvgPool2d((2, 3), k_coef_lip=2.0),
                   lambda: torchlip.ScaledAvgPool2d((2, 3), k_coef_lip=2.0), (2, 3, 7, 9)),
    "l2_2": (lambda: liptriton.ScaledL2NormPool2d(2), lambda: torchlip.ScaledL2NormPool2d(2), (2, 3, 6, 6)),
    "l2_3_k3": (lambda: liptriton.ScaledL2NormPool2d(3, k_coef_lip=3.0),
                lambda: torchlip.ScaledL2NormPool2d(3, k_coef_lip=3.0), (2, 2, 6, 9)),
    "adaptive_avg": (lambda: liptriton.ScaledAdaptiveAvgPool2d((1, 1)),
                     lambda: torchlip.ScaledAdaptiveAvgPool2d((1, 1)), (2, 3, 5, 7)),
    "adaptive_l2": (lambda: liptriton.ScaledAdaptativeL2NormPool2d((1, 1), k_coef_lip=0.5),
                    lambda: torchlip.ScaledAdaptativeL2NormPool2d((1, 1), k_coef_lip=0.5), (2, 3, 5, 4)),
    "down2": (lambda: liptriton.InvertibleDownSampling(2), lambda: torchlip.InvertibleDownSampling(2), (2, 3, 4, 6)),
    "up2": (lambda: liptriton.InvertibleUpSampling(2), lambda: torchlip.InvertibleUpSampling(2), (2, 8, 3, 2)),
    "layer_centering": (lambda: liptriton.LayerCentering(3), lambda: torchlip.LayerCentering(3), (2, 3, 4, 5)),
    "scale_bias": (lambda: liptriton.ScaleBiasLayer(0.5, 3), lambda: torchlip.ScaleBiasLayer(0.5, 3), (2, 3, 4)),
}
K = {"avg_2x3_k2": 2.0, "l2_3_k3": 3.0, "adaptive_l2": 0.5, "scale_bias": 0.5}


@pytest.mark.parametrize("name", list(POOLS))
def test_same_output_as_deel(name):
    ours, deel, shape = POOLS[name][0](), POOLS[name][1](), POOLS[name][2]
    for p in ours.parameters():  # non-zero biases, copied to deel's module
        p.data.normal_()
    deel.load_state_dict(ours.state_dict())
    x = torch.randn(*shape)
    assert_close(ours(x), deel(x))


@pytest.mark.parametrize("name", list(POOLS))
def test_lipschitz_constant(name):
    """Linear ones: operator norm by power iteration equals k. l2-norm pooling: ratios <= k, reached."""
    layer, shape, k = POOLS[name][0]().double(), POOLS[name][2], K.get(name, 1.0)
    x0 = torch.randn(*shape, dtype=torch.float64)
    if "l2" in name:
        x, y = torch.randn(64, *shape[1:], dtype=torch.float64), torch.randn(64, *shape[1:], dtype=torch.float64)
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        assert float(ratio.max()) <= k * (1 + BOUND_SLACK)
        d = 1e-6 * torch.randn_like(x0)  # locally linear, norm preserving: ratio k along x0
        local = (layer(x0 + 1e-3 * x0) - layer(x0)).norm() / (1e-3 * x0).norm()
        assert float(local) == pytest.approx(k, rel=1e-6)
        assert float((layer(x0 + d) - layer(x0)).norm() / d.norm()) <= k * (1 + BOUND_SLACK)
        return
    f = (lambda z: layer(z) - layer(torch.zeros_like(z)))  # drop the bias
    norm = OperatorNorm(shape[1:], first=200)(f)
    assert norm == pytest.approx(k, rel=BOUND_SLACK)


def test_batch_centering_and_lipnorm_equal_deel_train_and_eval():
    for make_ours, make_deel in [(lambda: liptriton.BatchCentering(3), lambda: torchlip.BatchCentering(3)),
                                 (lambda: liptriton.BatchLipNorm(3), lambda: torchlip.BatchLipNorm(3))]:
        ours, deel = make_ours(), make_deel()
        with torch.no_grad():
            ours.bias.normal_()
        deel.load_state_dict(ours.state_dict())
        for epoch in range(2):
            ours.train(), deel.train()
            for _ in range(3):
                x = torch.randn(5, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 1.0
                assert_close(ours(x), deel(x))
            ours.eval(), deel.eval()
            x = torch.randn(4, 3, 4, 4)
            assert_close(ours(x), deel(x))
            assert_close(ours(x), deel(x))  # a second eval forward: the running values are already folded
        export = ours.vanilla_export()
        assert isinstance(export, liptriton.ScaleBiasLayer)
        assert_close(export(x), ours(x))


def test_batch_centering_is_one_lipschitz_in_eval():
    bc = liptriton.BatchCentering(2)
    bc(torch.randn(6, 2, 3, 3))
    bc.eval()
    x, y = torch.randn(2, 3, 3), torch.randn(2, 3, 3)
    assert_close((bc(x[None]) - bc(y[None])).norm(), (x - y).norm())


@pytest.mark.parametrize("make, words", [
    (lambda: liptriton.ScaledAvgPool2d(2, stride=1), ["ScaledAvgPool2d", "stride", "kernel_size"]),
    (lambda: liptriton.ScaledAvgPool2d(2, padding=1), ["ScaledAvgPool2d", "padding"]),
    (lambda: liptriton.ScaledAvgPool2d(2, divisor_override=0), ["ScaledAvgPool2d", "divisor_override"]),
    (lambda: liptriton.ScaledL2NormPool2d(3, stride=2), ["ScaledL2NormPool2d", "stride"]),
    (lambda: liptriton.ScaledAdaptiveAvgPool2d((2, 2)), ["ScaledAdaptiveAvgPool2d", "output_size", "(1, 1)"]),
    (lambda: liptriton.ScaledAdaptativeL2NormPool2d(3), ["ScaledAdaptativeL2NormPool2d", "output_size"]),
    (lambda: liptriton.InvertibleDownSampling(0), ["InvertibleDownSampling", "kernel_size"]),
    (lambda: liptriton.InvertibleDownSampling(2)(torch.randn(1, 1, 3, 4)), ["InvertibleDownSampling", "multiple"]),
    (lambda: liptriton.InvertibleUpSampling(2)(torch.randn(1, 3, 2, 2)), ["InvertibleUpSampling", "channels"]),
    (lambda: liptriton.ScaledAvgPool2d(2, k_coef_lip=-1.0), ["ScaledAvgPool2d", "k_coef_lip"]),
], ids=["stride", "padding", "divisor", "l2_stride", "adaptive", "adaptive_l2", "down_k", "down_size",
        "up_channels", "k"])
def test_bad_arguments(make, words):
    with pytest.raises(ValueError) as err:
        make()
    for w in words:
        assert w in str(err.value)


def test_vanilla_export():
    assert type(liptriton.InvertibleDownSampling(2).vanilla_export()) is nn.PixelUnshuffle
    assert type(liptriton.InvertibleUpSampling(3).vanilla_export()) is nn.PixelShuffle
    assert type(liptriton.ScaledL2NormPool2d(2).vanilla_export()) is nn.LPPool2d
    scaled = liptriton.InvertibleDownSampling(2, k_coef_lip=2.0)
    assert scaled.vanilla_export() is scaled  # no plain torch equivalent: itself (no parametrization)
    x = torch.randn(1, 1, 4, 4)
    assert_close(scaled(x), 2.0 * nn.PixelUnshuffle(2)(x))


def test_pooling_and_batch_lipnorm_compile_fullgraph():
    """No data-dependent Python branch (deel-torchlip's BatchLipNorm calls .item()): fullgraph works."""
    torch._dynamo.reset()
    net = nn.Sequential(liptriton.BatchLipNorm(3), liptriton.ScaledL2NormPool2d(2), liptriton.LayerCentering(3),
                        liptriton.InvertibleDownSampling(2), liptriton.ScaledAdaptiveAvgPool2d((1, 1)))
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    x = torch.randn(4, 3, 8, 8)
    for train in (True, False):
        net.train(train)
        expected = copy.deepcopy(net)(x)
        assert_close(compiled(x), expected)
