"""The one bake path (liptriton._bake): what every consumer (certify, export, vanilla_model, utils) bakes."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

import liptriton
from liptriton._bake import bake_in_place, baked_tensors


def test_bake_in_place_keeps_the_parameter_and_gives_the_eval_weight():
    torch.manual_seed(0)
    lin = liptriton.bjorck(nn.Linear(6, 4))
    original = lin.parametrizations.weight.original
    baked_tensors(lin)
    assert lin.training  # baked_tensors puts the module back in its mode
    lin.eval()  # converged (a switch to eval converges again), then baked as it is
    expected = baked_tensors(lin)["weight"]
    liptriton.utils.remove_bjorck_norm(lin)
    assert type(lin) is nn.Linear and not parametrize.is_parametrized(lin)
    assert lin.weight is original and torch.equal(lin.weight.detach(), expected)  # optimizers keep working
    s = torch.linalg.svdvals(lin.weight.detach().double())
    assert float(s.max()) <= 1 + 1e-4 and float(s.min()) >= 0.99


def test_baking_a_copy_leaves_the_original_model_working():
    torch.manual_seed(0)
    net = nn.Sequential(liptriton.spectral(nn.Conv2d(2, 3, 3, padding=1)), nn.ReLU(), nn.Flatten(),
                        liptriton.bjorck(nn.Linear(3 * 25, 2)))
    x = torch.randn(2, 2, 5, 5)
    net(x)
    dup = copy.deepcopy(net)
    for m in dup.modules():
        if parametrize.is_parametrized(m):
            bake_in_place(m)
    assert not any(parametrize.is_parametrized(m) for m in dup.modules())
    assert all(parametrize.is_parametrized(net[i]) for i in (0, 3))  # the shared class kept its properties
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(dup.eval()(x), net(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(liptriton.vanilla_model(net, in_place=False)(x), net(x), rtol=1e-5, atol=1e-6)


def test_bake_of_one_tensor_leaves_the_other_parametrized():
    lin = liptriton.spectral(nn.Linear(3, 3))
    parametrize.register_parametrization(lin, "bias", nn.Identity())
    bake_in_place(lin, ("weight",))
    assert parametrize.is_parametrized(lin, "bias") and not parametrize.is_parametrized(lin, "weight")
    assert float(torch.linalg.matrix_norm(lin.weight.detach().double(), 2)) <= 1 + 1e-3
