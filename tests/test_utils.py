"""deel-torchlip's torchlip.utils on liptriton: the usage guide's recipe, lconv_norm's bound,
removal, and evaluate_lip_const."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import liptriton as torchlip
from tests._measure import OperatorNorm, dense_singular_values, plain_conv
from tests._tolerances import BOUND_SLACK


def test_usage_guide_recipe_gives_an_orthogonal_linear():
    # "This code is about equivalent to SpectralLinear(16, 32)" (torchlip-usage.txt)
    m = nn.Linear(16, 32)
    nn.init.orthogonal_(m.weight)
    m.bias.data.fill_(0.0)
    nn.utils.spectral_norm(m, "weight", 3)
    torchlip.utils.bjorck_norm(m, "weight", 15)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(5):
        loss = m(torch.randn(8, 16)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = dense_singular_values(m.weight)
    assert s.max() <= 1 + BOUND_SLACK and s.min() >= 0.99


@pytest.mark.parametrize("stride", [1, 2])
def test_lconv_norm_reaches_one(stride):
    conv = torchlip.utils.lconv_norm(nn.Conv2d(3, 6, 3, stride=stride, padding=1))
    x = torch.randn(4, 3, 10, 10)
    conv(x)
    norm = OperatorNorm((3, 10, 10))(plain_conv(conv, conv.weight.detach()))
    assert 0.99 <= norm <= 1 + BOUND_SLACK


def test_remove_functions_bake_the_weight():
    for add, remove, layer in [
        (torchlip.utils.bjorck_norm, torchlip.utils.remove_bjorck_norm, nn.Linear(5, 7)),
        (torchlip.utils.frobenius_norm, torchlip.utils.remove_frobenius_norm, nn.Linear(5, 1)),
        (torchlip.utils.lconv_norm, torchlip.utils.remove_lconv_norm, nn.Conv1d(2, 3, 3)),
    ]:
        add(layer)
        with torch.no_grad():
            expected = layer.eval().weight.clone()
        remove(layer)
        assert not parametrize.is_parametrized(layer)
        torch.testing.assert_close(layer.weight.detach(), expected)
    with pytest.raises(ValueError, match="no parametrization to remove"):
        torchlip.utils.remove_bjorck_norm(nn.Linear(2, 2))


def test_evaluate_lip_const_and_bad_input():
    net = nn.Sequential(torchlip.utils.bjorck_norm(nn.Linear(6, 6)), nn.ReLU(),
                        torchlip.utils.bjorck_norm(nn.Linear(6, 3)))
    value = torchlip.utils.evaluate_lip_const(net, torch.randn(8, 6))
    assert 0.3 < value <= 1 + BOUND_SLACK
    with pytest.raises(ValueError, match="evaluation_type must be one of"):
        torchlip.utils.evaluate_lip_const(net, torch.randn(2, 6), evaluation_type="sampling")
    with pytest.raises(ValueError, match="expected a convolution layer"):
        torchlip.utils.lconv_norm(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="eps must be > 0"):
        torchlip.utils.bjorck_norm(nn.Linear(3, 3), eps=0)
