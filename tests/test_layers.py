"""Drop-in deel-torchlip layers: the bound holds and is reached after training, exports are plain and
equal, bad arguments fail with clear errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _measure import OperatorNorm, dense_singular_values, plain_conv
from _tolerances import BOUND_SLACK, assert_close
from torch import nn
from torch.nn.utils import parametrize

import liptriton
from liptriton.nn.padconv import symmetric_pad


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is far faster than two on a shared 2-core machine (no spin-waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# name -> (factory, input shape without batch, k, reaches k)
CASES = {
    "spectral_linear": (lambda: liptriton.SpectralLinear(12, 8), (12,), 1.0, True),
    "spectral_linear_k2_wide": (lambda: liptriton.SpectralLinear(6, 10, k_coef_lip=2.0), (6,), 2.0, True),
    "spectral_linear_no_bjorck": (lambda: liptriton.SpectralLinear(8, 8, eps_bjorck=None), (8,), 1.0, True),
    "frobenius_linear_1": (lambda: liptriton.FrobeniusLinear(12, 1, k_coef_lip=0.5), (12,), 0.5, True),
    "frobenius_linear_joint": (lambda: liptriton.FrobeniusLinear(12, 4, disjoint_neurons=False), (12,), 1.0, False),
    "spectral_conv1d": (lambda: liptriton.SpectralConv1d(4, 6, 3, padding=1), (4, 16), 1.0, True),
    "spectral_conv1d_k5_stride2": (lambda: liptriton.SpectralConv1d(3, 4, 5, stride=2, k_coef_lip=3.0),
                                   (3, 17), 3.0, True),
    "spectral_conv2d": (lambda: liptriton.SpectralConv2d(4, 6, 3, padding=1, k_coef_lip=1.5), (4, 8, 8), 1.5, True),
    "spectral_conv2d_stride2": (lambda: liptriton.SpectralConv2d(4, 4, 3, stride=2, padding=1), (4, 8, 8), 1.0,
                                True),
    "spectral_conv2d_groups_dilation": (lambda: liptriton.SpectralConv2d(4, 4, 3, padding=2, dilation=2, groups=2),
                                        (4, 8, 8), 1.0, True),
    "spectral_conv2d_symmetric": (lambda: liptriton.SpectralConv2d(3, 4, 3, padding=2, padding_mode="symmetric"),
                                  (3, 7, 7), 1.0, True),
    "spectral_conv2d_reflect": (lambda: liptriton.SpectralConv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                                (3, 7, 7), 1.0, True),
    "frobenius_conv2d": (lambda: liptriton.FrobeniusConv2d(4, 4, 3, padding=1), (4, 8, 8), 1.0, False),
    "frobenius_conv2d_stride2": (lambda: liptriton.FrobeniusConv2d(3, 2, 3, stride=2, k_coef_lip=2.0), (3, 9, 9),
                                 2.0, False),
    "spectral_conv_transpose2d": (lambda: liptriton.SpectralConvTranspose2d(4, 3, 2, stride=2), (4, 6, 6), 1.0,
                                  True),
    "spectral_conv_transpose2d_pad": (lambda: liptriton.SpectralConvTranspose2d(3, 4, 3, padding=1, k_coef_lip=0.7),
                                      (3, 6, 6), 0.7, True),
}


def _measure(layer: nn.Module, weight: torch.Tensor, shape: tuple[int, ...], meter: OperatorNorm) -> float:
    """True operator norm of the linear part of ``layer`` applied with ``weight`` (float64)."""
    if isinstance(layer, nn.Linear):
        return float(dense_singular_values(weight)[0])
    if layer.padding_mode == "symmetric":  # torch has no such mode: mirror with numpy-checked symmetric_pad
        plain = liptriton.PadConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                    layer.padding, layer.dilation, layer.groups, False, "symmetric").double()
        with torch.no_grad():
            plain.weight.copy_(weight.double())
        return meter(plain)
    return meter(plain_conv(layer, weight))


def _train(layer: nn.Module, shape: tuple[int, ...], steps: int = 10, lr: float = 1e-3) -> None:
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        y = layer(torch.randn(4, *shape))
        loss = (y * torch.randn_like(y)).sum() + y.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("case", list(CASES))
def test_bound_after_adam(case):
    factory, shape, k, reaches = CASES[case]
    layer = factory()
    _train(layer, shape)
    meter = OperatorNorm(shape, first=200, then=40)
    with torch.no_grad():
        w_train = layer.weight  # training mode: the state advances, as in a training forward
    layer.eval()
    with torch.no_grad():
        w_eval = layer.weight
    for w in (w_train, w_eval):
        norm = _measure(layer, w, shape, meter)
        assert norm <= k * (1 + BOUND_SLACK), f"{case}: measured {norm} > k={k}"
        if reaches:
            assert norm >= 0.99 * k, f"{case}: measured {norm} < 0.99 k={k}"
    assert layer.lipschitz_bound() == pytest.approx(k)
    if isinstance(layer, liptriton.SpectralLinear) and layer.in_features == layer.out_features:
        s = dense_singular_values(w_eval)
        if case != "spectral_linear_no_bjorck":
            assert float(s.min()) >= 0.99 * k  # orthogonal: every singular value close to k


def test_frobenius_disjoint_neurons_each_k():
    layer = liptriton.FrobeniusLinear(10, 4, k_coef_lip=2.0)
    _train(layer, (10,))
    layer.eval()
    rows = layer.weight.detach().double().norm(dim=1)
    assert_close(rows, torch.full_like(rows, 2.0), dtype=torch.float32)
    assert layer.lipschitz_bound() == pytest.approx(2.0 * 2.0)  # k sqrt(out): a bound of the stacked neurons


def test_conv2d_32_reaches_k_unlike_deel():
    """Issue 3: a 32->32 3x3 conv reaches k up to the certificate's tightness; deel-torchlip's coercive
    factor leaves about 0.65. At 12 x 12 the operator (4608 inputs) is certified by its frequency
    blocks, whose bound exceeds the norm by about 2% at this size (0.3% from 16 x 16 up)."""
    shape = (32, 12, 12)
    ours = liptriton.SpectralConv2d(32, 32, (3, 3), padding=1)
    _train(ours, shape, steps=3)
    ours.eval()
    norm = OperatorNorm(shape, first=150)(plain_conv(ours, ours.weight))
    assert 0.975 <= norm <= 1 + BOUND_SLACK
    torchlip = pytest.importorskip("deel.torchlip")
    deel = torchlip.SpectralConv2d(32, 32, (3, 3), padding=1)
    deel.eval()
    deel_norm = OperatorNorm(shape, first=150)(plain_conv(deel, deel.weight))
    assert deel_norm < 0.75  # about 0.65: the bound is wasted


def test_spectral_conv1d_unlike_deel():
    """deel-torchlip over-constrains 1-D convs (1/sqrt(kernel size)); ours reaches k."""
    torchlip = pytest.importorskip("deel.torchlip")
    shape = (4, 24)
    deel = torchlip.SpectralConv1d(4, 4, 5, padding=2)
    deel.eval()
    ours = liptriton.SpectralConv1d(4, 4, 5, padding=2)
    ours.eval()
    assert OperatorNorm(shape)(plain_conv(deel, deel.weight)) < 0.9
    assert OperatorNorm(shape)(plain_conv(ours, ours.weight)) >= 0.99


@pytest.mark.parametrize("case", list(CASES))
def test_vanilla_export_plain_and_equal(case):
    factory, shape, _, _ = CASES[case]
    layer = factory()
    _train(layer, shape, steps=2)
    layer.eval()
    plain = layer.vanilla_export()
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert not isinstance(plain, liptriton.LipschitzModule)
    assert type(plain).__module__.startswith("torch.nn") or type(plain) in (liptriton.PadConv1d, liptriton.PadConv2d)
    x = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), layer(x), rtol=1e-5, atol=1e-5)


def test_isinstance_of_torch_layers():
    assert isinstance(liptriton.SpectralLinear(2, 2), nn.Linear)
    assert isinstance(liptriton.FrobeniusLinear(2, 2), nn.Linear)
    assert isinstance(liptriton.SpectralConv1d(2, 2, 1), nn.Conv1d)
    assert isinstance(liptriton.SpectralConv2d(2, 2, 1), nn.Conv2d)
    assert isinstance(liptriton.FrobeniusConv2d(2, 2, 1), nn.Conv2d)
    assert isinstance(liptriton.SpectralConvTranspose2d(2, 2, 1), nn.ConvTranspose2d)
    lin = liptriton.SpectralLinear(3, 2)
    assert float(lin.bias.detach().abs().max()) == 0.0


def test_k_coef_lip_set_later_reaches_parametrization():
    lin = liptriton.SpectralLinear(6, 6)
    lin._coefficient_lip = 3.0
    lin.eval()
    s = dense_singular_values(lin.weight)
    assert 0.99 * 3 <= float(s.min()) and float(s.max()) <= 3 * (1 + BOUND_SLACK)
    fro = liptriton.FrobeniusLinear(6, 1)
    fro.k_coef_lip = 0.25
    assert float(fro.weight.detach().norm()) == pytest.approx(0.25, rel=1e-5)


@pytest.mark.parametrize("pads", [(1, 1), (2, 0), (0, 3), (1, 2, 2, 1)], ids=str)
def test_symmetric_pad_matches_numpy(pads):
    x = torch.randn(2, 3, 5, 6) if len(pads) == 4 else torch.randn(2, 3, 6)
    np_pads = [(0, 0)] * (x.dim() - len(pads) // 2) + [(pads[2 * i], pads[2 * i + 1])
                                                       for i in reversed(range(len(pads) // 2))]
    expected = np.pad(x.numpy(), np_pads, mode="symmetric")
    torch.testing.assert_close(symmetric_pad(x, pads), torch.from_numpy(expected))


def test_padconv_symmetric_equals_deel():
    torchlip = pytest.importorskip("deel.torchlip")
    for pad in (1, 2):
        ours = liptriton.PadConv2d(2, 3, 3, padding=pad, padding_mode="symmetric")
        deel = torchlip.PadConv2d(2, 3, 3, padding=pad, padding_mode="symmetric")
        deel.load_state_dict(ours.state_dict())
        x = torch.randn(2, 2, 7, 6)
        torch.testing.assert_close(ours(x), deel(x))
    ours1 = liptriton.PadConv1d(2, 3, 3, padding=2, padding_mode="symmetric")
    deel1 = torchlip.PadConv1d(2, 3, 3, padding=2, padding_mode="symmetric")
    deel1.load_state_dict(ours1.state_dict())
    x = torch.randn(2, 2, 9)
    torch.testing.assert_close(ours1(x), deel1(x))


@pytest.mark.parametrize("make, words", [
    (lambda: liptriton.SpectralConv2d(4, 6, 3, groups=4), ["SpectralConv2d", "groups", "divide"]),
    (lambda: liptriton.SpectralConv1d(3, 3, 3, padding_mode="mirror"), ["SpectralConv1d", "padding_mode"]),
    (lambda: liptriton.SpectralConvTranspose2d(2, 2, 3, padding_mode="reflect"),
     ["SpectralConvTranspose2d", "padding_mode", "zeros"]),
    (lambda: liptriton.SpectralLinear(2, 2, k_coef_lip=0), ["SpectralLinear", "k_coef_lip"]),
    (lambda: liptriton.SpectralLinear(2, 2, eps_bjorck=-1.0), ["SpectralLinear", "eps_bjorck"]),
    (lambda: liptriton.SpectralConv2d(2, 2, 3, eps_spectral=0.0), ["SpectralConv2d", "eps_spectral"]),
    (lambda: liptriton.FrobeniusConv2d(2, 2, 3, groups=3), ["FrobeniusConv2d", "groups"]),
    (lambda: liptriton.SpectralConvTranspose2d(2, 2, 3, stride=2, output_padding=2),
     ["SpectralConvTranspose2d", "output_padding", "stride"]),
], ids=["groups", "pad_mode", "transpose_pad_mode", "k", "eps_bjorck", "eps_spectral", "frobenius_groups",
        "transpose_output_padding"])
def test_bad_arguments(make, words):
    with pytest.raises(ValueError) as err:
        make()
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("case", ["spectral_linear", "frobenius_linear_joint", "spectral_conv1d",
                                  "spectral_conv2d_groups_dilation", "spectral_conv2d_symmetric", "frobenius_conv2d",
                                  "spectral_conv_transpose2d"])
def test_compile_fullgraph_training(case):
    """Dynamo captures the training forward and backward in one graph (a graph break raises), with the
    same outputs as an eager copy (AOT autograd: see the usage-example test)."""
    factory, shape, _, _ = CASES[case]
    torch._dynamo.reset()
    layer = factory()
    x = torch.randn(2, *shape)
    liptriton.parametrizations.initialize(layer, x)
    eager = copy.deepcopy(layer)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    for _ in range(2):
        out = compiled(x)
        out.square().sum().backward()
        assert_close(out.detach(), eager(x).detach(), iterative=True)
