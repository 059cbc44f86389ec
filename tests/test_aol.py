"""AOL (liptriton.aol): the bound, measured independently, in training against a hostile optimizer.

Dense: float64 SVD of the weight the layer applies. Convolutions: float64 SVD of the exact
operator matrix (a plain torch convolution of the unit inputs, tests/_measure.py), strides 1
and 2, groups, dilation, transposed. Tightness (measured norm / k) is asserted where AOL is
exact (orthogonal weights, non-negative kernels on a large input) and never degenerate.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import liptriton
from tests._measure import dense_singular_values, exact_conv_norm, hostile_ratios

SLACK = 1e-5  # AOL is a closed-form bound: only float32 rounding separates it from k

DENSE = {"square": (10, 10), "wide": (24, 6), "tall": (6, 24), "one-input": (1, 5), "one-output": (7, 1)}
CONVS = {
    "conv2d-s1-p1": (lambda: nn.Conv2d(3, 4, 3, padding=1), (6, 5)),
    "conv2d-s2-p1": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (7, 6)),
    "conv2d-s2-k4": (lambda: nn.Conv2d(2, 3, 4, stride=2), (8, 8)),
    "conv2d-dil2": (lambda: nn.Conv2d(3, 4, 3, padding=2, dilation=2), (6, 5)),
    "conv2d-groups2": (lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), (6, 5)),
    "conv2d-same-k2": (lambda: nn.Conv2d(3, 4, 2, padding="same"), (6, 5)),
    "conv1d-s2": (lambda: nn.Conv1d(3, 5, 5, stride=2, padding=2), (12,)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 3, padding=1), (4, 3, 3)),
    "convT2d-s2": (lambda: nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1), (4, 3)),
    "convT2d-groups2": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), (4, 4)),
    "convT1d": (lambda: nn.ConvTranspose1d(3, 4, 3, padding=1), (10,)),
}


def _hostile(layer: nn.Module, make_x, size, k: float, steps: int, lr: float = 1e-2) -> list[float]:
    return hostile_ratios(layer, make_x, size, k, steps, lr, initial=True)


@pytest.mark.parametrize("k", [1.0, 2.5], ids=["k1", "k2.5"])
@pytest.mark.parametrize("shape", DENSE.values(), ids=DENSE.keys())
def test_dense_bound_every_step(shape, k):
    torch.manual_seed(0)
    layer = liptriton.aol(nn.Linear(*shape), k=k)
    ratios = _hostile(layer, lambda: torch.randn(8, shape[0]), None, k, steps=30)
    assert max(ratios) <= 1 + SLACK, f"sigma_max reached {max(ratios):.7f} k"
    assert min(ratios) >= 0.3, f"degenerate: sigma_max {min(ratios):.4f} k"  # AOL keeps a fair share of k


@pytest.mark.parametrize("conv", CONVS, ids=CONVS.keys())
def test_conv_bound_every_step(conv):
    torch.manual_seed(0)
    make, size = CONVS[conv]
    layer = liptriton.aol(make(), k=1.5)
    ratios = _hostile(layer, lambda: torch.randn(4, layer.in_channels, *size), size, 1.5, steps=8)
    assert max(ratios) <= 1 + SLACK, f"operator norm reached {max(ratios):.7f} k"
    assert min(ratios) >= 0.2, f"degenerate: operator norm {min(ratios):.4f} k"


def test_exact_where_aol_is_tight():
    """AOL leaves an orthogonal matrix unchanged, and a non-negative stride-1 kernel reaches k
    on a large input (its self-correlation is non-negative: the Schur test is then tight)."""
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    nn.init.orthogonal_(lin.weight)
    q = lin.weight.detach().clone()
    liptriton.aol(lin, k=2.0)
    torch.testing.assert_close(lin.weight.detach(), 2.0 * q, rtol=1e-5, atol=1e-6)
    conv = nn.Conv1d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.rand(1, 1, 3) + 0.1)
    liptriton.aol(conv)
    assert 0.99 <= exact_conv_norm(conv, conv.weight, (256,)) <= 1 + SLACK


def test_registration_errors_and_lipschitzify():
    with pytest.raises(ValueError, match=r"liptriton.aol\(Conv2d\): padding_mode must be one of \('zeros',\)"):
        liptriton.aol(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="k must be a finite number > 0"):
        liptriton.aol(nn.Linear(2, 2), k=0.0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    x = torch.randn(2, 2, 8, 8)
    lip = liptriton.lipschitzify(net, method="aol", k=2.0)
    assert "aol(k=" in str(lip.lipschitz_report)
    cert = liptriton.certify(lip, x, n_samples=1, power_iters=5, ascent_steps=0)
    assert cert.lower <= cert.upper <= 2.0 * (1 + 1e-3)
    baked = liptriton.bake(lip)
    with torch.no_grad():
        torch.testing.assert_close(baked(x), lip.eval()(x), rtol=1e-5, atol=1e-6)
