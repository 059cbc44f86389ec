"""certify: guaranteed conv bounds, exact agreement on linear models, infinite bounds named,
the model left as it was, readable table, certified radii."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import liptriton
from liptriton.bounds.activations import ACTIVATION_CONSTANTS
from liptriton.bounds.conv_bound import conv_norm_bound, conv_operator_matrix
from liptriton.bounds.conv_operator import ConvSpec
from tests._tolerances import BOUND_SLACK, tol

CONVS = {
    "conv2d-pad1": lambda: nn.Conv2d(3, 4, 3, padding=1),
    "conv2d-stride2": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
    "conv2d-groups": lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    "conv2d-dilation": lambda: nn.Conv2d(2, 3, 3, padding=2, dilation=2),
    "conv1d-stride3": lambda: nn.Conv1d(2, 3, 5, stride=3, padding=2),
    "conv2d-circular": lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
    "conv2d-circular-s2": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular"),
    "conv2d-reflect": lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    "conv2d-replicate-same": lambda: nn.Conv2d(2, 3, 3, padding="same", padding_mode="replicate"),
    "convT2d-s2": lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
    "conv2d-1x1-s2": lambda: nn.Conv2d(3, 4, 1, stride=2),
    "conv2d-k7-tiny": lambda: nn.Conv2d(2, 2, 7, padding=3),
    "conv3d": lambda: nn.Conv3d(2, 2, 3, padding=1),
}


def _exact_norm(module: nn.Module, size: tuple[int, ...]) -> float:
    """Operator norm from the Jacobian of the layer itself (bias irrelevant), float64 SVD."""
    layer = module.double()
    x = torch.zeros(1, layer.in_channels, *size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: layer(z) - layer(torch.zeros_like(z)), x)
    return float(torch.linalg.matrix_norm(jac.reshape(-1, x.numel()), 2))


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_bound_guaranteed(name):
    layer = CONVS[name]()
    spec = ConvSpec.from_module(layer)
    size = (7,) * spec.ndim if spec.ndim < 3 else (4,) * 3
    exact = _exact_norm(layer, size)
    dense = conv_norm_bound(spec, layer.weight, size, "dense")
    fourier = conv_norm_bound(spec, layer.weight, size, "fourier")
    assert dense.exact and dense.bound >= exact and dense.bound == pytest.approx(exact, rel=1e-9)
    assert fourier.bound >= exact * (1 - 1e-12)
    if "circular" in name and size[0] % spec.stride[0] == 0:
        assert fourier.exact and fourier.bound == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_operator_matrix_is_the_layer_jacobian(name):
    """The dense matrix (weights placed where they act; unit inputs for transposed layers) equals
    the layer's own Jacobian (autograd through torch's convolution, bias removed) entry for entry."""
    layer = CONVS[name]().double()
    spec = ConvSpec.from_module(layer)
    size = (6, 5)[: spec.ndim] if spec.ndim < 3 else (3, 4, 3)
    x = torch.zeros(1, layer.in_channels, *size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: layer(z) - layer(torch.zeros_like(z)), x)
    a = conv_operator_matrix(spec, layer.weight, size)
    assert torch.equal(a, jac.reshape(-1, x.numel()))


def test_conv_bound_fourier_exact_circular_even_size_and_tightens_with_size():
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular")
    spec = ConvSpec.from_module(layer)
    res = conv_norm_bound(spec, layer.weight, (8, 8), "fourier")
    assert res.exact and res.bound == pytest.approx(_exact_norm(layer, (8, 8)), rel=1e-9)
    zero = nn.Conv2d(3, 4, 3, padding=1)
    s = ConvSpec.from_module(zero)
    gaps = [conv_norm_bound(s, zero.weight, (n, n), "fourier").bound / _exact_norm(zero, (n, n)) for n in (4, 12)]
    assert 1.0 <= gaps[1] < gaps[0]


def test_conv_operator_matrix_columns_and_errors():
    layer = nn.Conv1d(1, 1, 2, bias=False)
    a = conv_operator_matrix(ConvSpec.from_module(layer), layer.weight, (3,))
    w = layer.weight.detach().double().flatten()
    torch.testing.assert_close(a, torch.tensor([[w[0], w[1], 0.0], [0.0, w[0], w[1]]], dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        conv_norm_bound(ConvSpec.from_module(layer), layer.weight, (3,), "svd")
    with pytest.raises(ValueError, match="input_size"):
        conv_norm_bound(ConvSpec.from_module(layer), layer.weight, (3, 3))


def test_certify_linear_models_agree_with_dense_matrix():
    lin = nn.Linear(6, 5)
    cert = liptriton.certify(lin, torch.randn(3, 6), power_iters=60, ascent_steps=0)
    exact = float(torch.linalg.matrix_norm(lin.weight.detach().double(), 2))
    assert cert.upper == pytest.approx(exact, rel=1e-9) and cert.upper >= exact
    assert cert.lower == pytest.approx(exact, rel=1e-6) and cert.lower <= cert.upper

    net = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    dense = torch.autograd.functional.jacobian(lambda z: net.double()(z).flatten(), x[:1]).reshape(4, -1)
    exact = float(torch.linalg.matrix_norm(dense, 2))
    cert = liptriton.certify(net.float(), x.float(), power_iters=100, ascent_steps=0)
    conv_norm = _exact_norm(net[0], (7, 7))
    lin_norm = float(torch.linalg.matrix_norm(net[2].weight.detach().double(), 2))
    assert cert.upper == pytest.approx(conv_norm * lin_norm, rel=1e-9)  # product of exact layer norms
    assert cert.upper >= exact
    assert cert.lower == pytest.approx(exact, rel=1e-5) and cert.lower <= exact * (1 + 1e-12)


def test_certify_sums_concatenations_and_pooling_rules():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return torch.cat([self.a(x) + self.b(x), 2.0 * x], dim=1)

    net = Net()
    cert = liptriton.certify(net, torch.randn(2, 4))
    na, nb = (float(torch.linalg.matrix_norm(m.weight.detach().double(), 2)) for m in (net.a, net.b))
    assert cert.upper == pytest.approx(math.sqrt((na + nb) ** 2 + 4.0), rel=1e-9)
    pool = liptriton.certify(nn.AvgPool2d(2), torch.randn(1, 2, 8, 8), power_iters=30)
    assert pool.upper == pytest.approx(0.5, rel=1e-9) and pool.lower == pytest.approx(0.5, rel=1e-5)
    gap = liptriton.certify(nn.AdaptiveAvgPool2d(1), torch.randn(1, 2, 4, 4))
    assert gap.upper == pytest.approx(0.25, rel=1e-9)

    class Index(nn.Module):
        def forward(self, x):
            return x[:, [0, 0]]  # repeats a column: constant sqrt(2)

    cert = liptriton.certify(Index(), torch.randn(2, 4), n_samples=1, power_iters=5, ascent_steps=0)
    assert cert.upper == pytest.approx(math.sqrt(2.0), rel=1e-9) and cert.lower == pytest.approx(math.sqrt(2.0))
    assert liptriton.certify(nn.Hardshrink(), torch.randn(2, 4), n_samples=1, power_iters=2).upper == math.inf


def test_certify_multihead_attention_is_infinite_and_named():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.attn(x, x, x)[0])

    cert = liptriton.certify(Attn(), torch.randn(2, 5, 8), n_samples=1, power_iters=3, ascent_steps=0)
    assert math.isinf(cert.upper) and math.isinf(cert.ratio)
    assert [name for name, _ in cert.unbounded] == ["attn"]
    assert "softmax attention" in cert.unbounded[0][1] and "attn" in str(cert)
    assert 0 < cert.lower < math.inf


def test_certify_untraceable_model_reports_reason():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    cert = liptriton.certify(Branchy(), torch.ones(2, 3), n_samples=1, power_iters=3, ascent_steps=0)
    assert math.isinf(cert.upper) and "could not trace" in cert.unbounded[0][1]


def test_certify_leaves_model_as_it_was_and_prints_table():
    net = nn.Sequential(liptriton.bjorck(nn.Conv2d(2, 4, 3, padding=1), power_iters_init=20), nn.ReLU(),
                        nn.Flatten(), liptriton.spectral(nn.Linear(4 * 6 * 6, 3)))
    x = torch.randn(4, 2, 6, 6)
    net(x)  # training forward: learns the input size
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cert = liptriton.certify(net, x, n_samples=2, power_iters=10, ascent_steps=1)
    assert net.training and all(m.training for m in net.modules())
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert cert.lower <= cert.upper <= 1 + BOUND_SLACK
    text = str(cert)
    assert "upper" in text and "lower" in text and "Conv2d" in text and "float64 SVD" in text
    assert len(cert.nodes) == 6 and cert.nodes[-1].bound == cert.upper


def test_certify_progress_bar(capsys):
    liptriton.certify(nn.Linear(3, 2), torch.randn(2, 3), n_samples=1, power_iters=2, ascent_steps=0,
                      progress=True)
    err = capsys.readouterr().err
    assert "certify: upper bound [" in err and "certify: lower bound [" in err


def test_certify_radii_from_margins():
    net = liptriton.bjorck(nn.Linear(5, 3))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    cert = liptriton.certify(net, x, y, n_samples=1, power_iters=3, ascent_steps=0)
    with torch.no_grad():
        expected = liptriton.metrics.certified_radius(net.eval()(x), y, cert.upper)
    torch.testing.assert_close(cert.radii, expected, **tol(torch.float32))


def test_certify_bad_arguments():
    with pytest.raises(TypeError, match="certify: model"):
        liptriton.certify(lambda x: x, torch.randn(2, 3))
    with pytest.raises(TypeError, match="example_input"):
        liptriton.certify(nn.Linear(3, 3), torch.ones(2, 3, dtype=torch.long))


@pytest.mark.parametrize("act", [nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.SELU, nn.Sigmoid, nn.Tanh])
def test_activation_constants_bound_the_derivative(act):
    x = torch.linspace(-12, 12, 400001, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(act()(x).sum(), x)
    c = ACTIVATION_CONSTANTS[act]
    assert float(g.abs().max()) <= c < float(g.abs().max()) * (1 + 1e-3)
