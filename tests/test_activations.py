"""Lipschitz activations: same outputs as deel-torchlip, exact k, compile, bad inputs."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import liptriton
import liptriton.functional as LF
from liptriton.nn import FullSort, GroupSort, GroupSort2, HouseHolder, LPReLU, MaxMin
from tests._tolerances import BOUND_SLACK, assert_close

torchlip = pytest.importorskip("deel.torchlip")

NAMES = ["MaxMin", "GroupSort", "GroupSort2", "FullSort", "LPReLU", "HouseHolder"]

# (module factory (ours or deel's), input shape); HouseHolder gets deel's theta copied in.
DEEL_CASES = {
    "maxmin": (lambda lib, k: lib.MaxMin(k_coef_lip=k), (4, 6, 3, 3)),
    "maxmin-dim2": (lambda lib, k: lib.MaxMin(dim=2, k_coef_lip=k), (3, 4, 5)),
    "maxmin-1d": (lambda lib, k: lib.MaxMin(k_coef_lip=k), (7,)),
    "groupsort-4": (lambda lib, k: lib.GroupSort(4, k_coef_lip=k), (5, 8, 2, 3)),
    "groupsort-3": (lambda lib, k: lib.GroupSort(3, k_coef_lip=k), (5, 9)),
    "groupsort-none": (lambda lib, k: lib.GroupSort(k_coef_lip=k), (3, 7, 2)),
    "groupsort-big": (lambda lib, k: lib.GroupSort(64, k_coef_lip=k), (3, 6)),
    "groupsort2": (lambda lib, k: lib.GroupSort2(k_coef_lip=k), (4, 6, 2, 2, 2)),
    "fullsort": (lambda lib, k: lib.FullSort(k_coef_lip=k), (4, 11)),
    "lprelu": (lambda lib, k: lib.LPReLU(init=0.3, k_coef_lip=k), (4, 5, 3)),
    "lprelu-channels": (lambda lib, k: lib.LPReLU(5, init=-0.6, k_coef_lip=k), (4, 5, 3)),
    "householder": (lambda lib, k: lib.HouseHolder(6, k_coef_lip=k, theta_initializer="normal"), (4, 6, 3)),
}


def _outputs(module, x, g):
    x = x.clone().requires_grad_(True)
    y = module(x)
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(y, [x, *params], g)
    return y, grads


@pytest.mark.parametrize("path", ["torch", "interpret"])
@pytest.mark.parametrize("case", list(DEEL_CASES))
def test_equals_deel_torchlip(case, path, request):
    """Forward and gradients (input and parameters) equal deel-torchlip's at k=1, and with the same k
    where deel-torchlip honours it (everything but LPReLU and HouseHolder)."""
    if path == "interpret":
        request.getfixturevalue("interpret")
    make, shape = DEEL_CASES[case]
    ks = [1.0] if case.startswith(("lprelu", "householder")) else [1.0, 2.5]
    for k in ks:
        ours, theirs = make(liptriton, k), make(torchlip, k)
        if case == "householder":
            with torch.no_grad():
                ours.theta.copy_(theirs.theta)
        x = torch.randn(shape)
        y_ref = theirs(x)
        g = torch.randn_like(y_ref)
        y, grads = _outputs(ours, x, g)
        y_ref, grads_ref = _outputs(theirs, x, g)
        assert_close(y, y_ref)
        for a, b in zip(grads, grads_ref):
            assert_close(a, b)


def test_same_constructor_signatures_and_exports():
    for name in NAMES:
        ours = inspect.signature(getattr(liptriton, name).__init__).parameters
        theirs = inspect.signature(getattr(torchlip, name).__init__).parameters
        ours_params = [(p.name, p.default) for p in ours.values()]
        assert ours_params == [(p.name, p.default) for p in theirs.values()], name
        assert getattr(liptriton, name) is getattr(liptriton.nn, name)
    for fn in ("max_min", "group_sort", "group_sort_2", "full_sort", "lipschitz_prelu"):
        assert fn in LF.__all__
    # `from liptriton import *` imports exactly liptriton.__all__
    assert set(NAMES) <= set(liptriton.__all__)
    assert all(hasattr(liptriton, name) for name in liptriton.__all__)


def _lipschitz_estimates(f, dim: int, shape_of, n_pairs: int = 256) -> tuple[float, float]:
    """(max over pairs of ||f(x)-f(y)|| / ||x-y||, max over points of ||J_f(x)||_2), float64.

    Pairs: half far apart, a quarter close, a quarter close along one coordinate (where a
    piecewise-linear map is locally linear and elementwise slopes show one at a time).
    """
    x = torch.randn(n_pairs, dim, dtype=torch.float64)
    dy = torch.randn(n_pairs, dim, dtype=torch.float64)
    dy[n_pairs // 2:] *= 1e-4
    axis = torch.randint(0, dim, (n_pairs // 4,))
    dy[-(n_pairs // 4):] = 1e-4 * torch.nn.functional.one_hot(axis, dim).double()
    y = x + dy

    def flat(t):
        return f(t.reshape(-1, *shape_of)).reshape(t.shape[0], -1)

    ratio = (flat(x) - flat(y)).norm(dim=1) / dy.norm(dim=1)
    jac_norms = []
    for point in x[:6]:
        jac = torch.func.jacrev(lambda t: flat(t[None])[0])(point)
        jac_norms.append(torch.linalg.matrix_norm(jac, 2))
    return float(ratio.max()), float(torch.stack(jac_norms).max())


LIP_CASES = {
    "maxmin": (lambda k: MaxMin(k_coef_lip=k), (6, 2)),
    "groupsort2": (lambda k: GroupSort2(k_coef_lip=k), (8, 2)),
    "groupsort4": (lambda k: GroupSort(4, k_coef_lip=k), (8, 2)),
    "fullsort": (lambda k: FullSort(k_coef_lip=k), (7,)),
    "lprelu": (lambda k: LPReLU(3, init=0.25, k_coef_lip=k), (3, 4)),
    "householder": (lambda k: HouseHolder(6, k_coef_lip=k, theta_initializer="normal"), (6, 2)),
}


@pytest.mark.parametrize("k", [0.5, 2.0])
@pytest.mark.parametrize("case", list(LIP_CASES))
def test_lipschitz_constant_is_exactly_k(case, k):
    make, shape = LIP_CASES[case]
    module = make(k).double()
    if case == "lprelu":
        with torch.no_grad():
            module.weight.copy_(torch.tensor([3.0, -0.5, 0.9]))  # clamped to [-1, 1]
    dim = math.prod(shape)
    with torch.no_grad():
        pair_max, jac_max = _lipschitz_estimates(module, dim, shape)
    assert pair_max <= k * (1 + BOUND_SLACK), pair_max
    assert jac_max <= k * (1 + BOUND_SLACK), jac_max
    assert pair_max >= k * (1 - BOUND_SLACK) and jac_max >= k * (1 - BOUND_SLACK), (pair_max, jac_max)


def test_deel_lprelu_misses_k_and_ours_does_not():
    x = torch.tensor([[1.0, -1.0]])
    ours, theirs = LPReLU(init=0.25, k_coef_lip=0.5), torchlip.LPReLU(init=0.25, k_coef_lip=0.5)
    assert float(theirs(x).detach()[0, 0]) == 1.0  # slope 1 > k on positive inputs: not 0.5-Lipschitz
    assert_close(ours(x).detach(), torch.tensor([[0.5, -0.125]]))


@pytest.mark.parametrize("k", [0.5, 3.0])
def test_lprelu_stays_k_lipschitz_after_adam(k):
    torch.manual_seed(1)
    layer = LPReLU(4, init=0.25, k_coef_lip=k)
    opt = torch.optim.Adam(layer.parameters(), lr=0.5)
    x = torch.randn(64, 4, 3)
    for _ in range(10):
        opt.zero_grad()
        loss = -(layer(x) * torch.sign(x) * 3).abs().mean()  # pushes |a| far beyond 1
        loss.backward()
        opt.step()
    assert float(layer.weight.abs().max()) > 1.0
    with torch.no_grad():
        pair_max, jac_max = _lipschitz_estimates(layer.double(), 12, (4, 3))
    assert pair_max <= k * (1 + BOUND_SLACK) and jac_max <= k * (1 + BOUND_SLACK)
    assert jac_max >= k * (1 - BOUND_SLACK)


def test_householder_any_axis():
    layer = HouseHolder(4, k_coef_lip=1.5, theta_initializer="normal")
    z = torch.randn(3, 5, 4)
    moved = layer(z.movedim(-1, 1)).movedim(1, -1)
    assert_close(layer(z, axis=-1), moved)
    assert_close(LF.householder_activation(z, layer.theta, dim=2, k_coef_lip=1.5), moved)


def test_vanilla_export():
    layer = LPReLU(3, init=1.7)
    plain = layer.vanilla_export()
    assert type(plain) is nn.PReLU
    x = torch.randn(5, 3)
    assert_close(plain(x), layer(x))
    for module in (GroupSort2(), MaxMin(), HouseHolder(4), LPReLU(k_coef_lip=2.0)):
        assert module.vanilla_export() is module


@pytest.mark.slow
def test_compile_fullgraph_equals_eager():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), GroupSort2(k_coef_lip=1.5), MaxMin(k_coef_lip=0.5),
                          LPReLU(16, k_coef_lip=2.0), GroupSort(4))
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    for step in range(2):
        x = torch.randn(5, 6)
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            y_c = compiled(x)
        y_e = model(x)
        assert_close(y_c, y_e)
        g_c = torch.autograd.grad(y_c.square().sum(), list(model.parameters()))
        g_e = torch.autograd.grad(y_e.square().sum(), list(model.parameters()))
        for a, b in zip(g_c, g_e):
            assert_close(a, b)


def test_bad_inputs_name_layer_argument_and_allowed_values():
    with pytest.raises(ValueError, match=r"GroupSort: the size 6 of dim 1 .* multiple of group_size=4"):
        GroupSort(4)(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"GroupSort2: the size 5 of dim 1 .* group_size=2"):
        GroupSort2()(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="GroupSort: group_size must be a positive int"):
        GroupSort(0)
    with pytest.raises(TypeError, match="GroupSort: group_size must be a positive int or None"):
        GroupSort(2.0)
    with pytest.raises(ValueError, match=r"GroupSort: dim must be in \[-1, 1\)"):
        GroupSort(2)(torch.randn(4))
    with pytest.raises(ValueError, match=r"MaxMin: dim must be in \[-3, 3\) .* got 3"):
        MaxMin(dim=3)(torch.randn(2, 3, 4))
    with pytest.raises(TypeError, match="MaxMin: input must be a floating-point tensor, got dtype torch.int"):
        MaxMin()(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="FullSort: input must be a floating-point tensor"):
        FullSort()(torch.ones(2, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="group_sort: dim must be in"):
        LF.group_sort(torch.randn(2, 4), 2, dim=-3)
    for bad_k in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="GroupSort2: k_coef_lip must be a finite positive float"):
            GroupSort2(k_coef_lip=bad_k)
    with pytest.raises(ValueError, match="max_min: k_coef_lip must be"):
        LF.max_min(torch.randn(2, 2), k_coef_lip=0)
    with pytest.raises(ValueError, match="HouseHolder: channels must be a positive even int, got 5"):
        HouseHolder(5)
    with pytest.raises(ValueError, match="HouseHolder: theta_initializer must be None, a float or one of"):
        HouseHolder(4, theta_initializer="uniform")
    with pytest.raises(ValueError, match=r"HouseHolder: the input must have channels=4 entries along axis 1"):
        HouseHolder(4)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="LPReLU: num_parameters=3 must be 1 or the channel count"):
        LPReLU(3)(torch.randn(2, 4))
    with pytest.raises(TypeError, match="LPReLU: input must be a floating-point tensor"):
        LPReLU()(torch.ones(2, 4, dtype=torch.int64))


@pytest.mark.gpu
@pytest.mark.parametrize("make", [lambda: GroupSort2(k_coef_lip=2.0), lambda: GroupSort(4, k_coef_lip=0.5),
                                  lambda: FullSort(), lambda: MaxMin(k_coef_lip=3.0)],
                         ids=["groupsort2", "groupsort4", "fullsort", "maxmin"])
def test_modules_gpu_match_deel(make):
    ours = make()
    theirs = {"GroupSort2": lambda: torchlip.GroupSort2(ours.k_coef_lip),
              "GroupSort": lambda: torchlip.GroupSort(ours.group_size, ours.k_coef_lip),
              "FullSort": lambda: torchlip.FullSort(ours.k_coef_lip),
              "MaxMin": lambda: torchlip.MaxMin(k_coef_lip=ours.k_coef_lip)}[type(ours).__name__]()
    x = torch.randn(64, 128, 32, 32, device="cuda")
    g = torch.randn_like(theirs(x))
    y, grads = _outputs(ours, x, g)
    y_ref, grads_ref = _outputs(theirs, x, g)
    assert_close(y, y_ref)
    assert_close(grads[0], grads_ref[0])
