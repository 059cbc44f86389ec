"""Every public name that changed keeps working through a deprecated alias that warns."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

import liptriton
from liptriton.parametrizations import Spectral, WeightLayout


def _state(module: nn.Module):
    return module.parametrizations.weight[0].state


def test_spectral_n_iters_is_power_iters():
    with pytest.warns(DeprecationWarning, match="n_iters is deprecated, use power_iters"):
        old = liptriton.spectral(nn.Linear(4, 3), n_iters=3, bound="estimate")
    with pytest.warns(DeprecationWarning, match="n_iters_init is deprecated, use power_iters_init"):
        init = liptriton.spectral(nn.Linear(4, 3), n_iters_init=7, bound="estimate")
    new = liptriton.spectral(nn.Linear(4, 3), power_iters=3, power_iters_init=7, bound="estimate")
    assert _state(old).n_iters == _state(new).n_iters == 3
    assert _state(init).n_iters_init == _state(new).n_iters_init == 7
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_iter'"):
        liptriton.spectral(nn.Linear(4, 3), n_iter=3)


def test_spectral_class_and_lipschitzify_accept_the_old_names():
    lin = nn.Linear(4, 3)
    with pytest.warns(DeprecationWarning, match="Spectral: n_iters"):
        p = Spectral(WeightLayout(lin, "weight", "test"), 1.0, n_iters=2, bound="estimate")
    assert p.state.n_iters == 2
    with pytest.warns(DeprecationWarning, match="n_iters_init"):
        lip = liptriton.lipschitzify(nn.Sequential(nn.Linear(4, 3)), method="spectral", n_iters_init=9)
    assert lip.get_submodule("0").parametrizations.weight[0].state.n_iters_init == 9


def test_multiclass_hinge_module_is_multiclass_hkr():
    sys.modules.pop("liptriton.ops.multiclass_hinge", None)
    with pytest.warns(DeprecationWarning, match="liptriton.ops.multiclass_hkr"):
        old = importlib.import_module("liptriton.ops.multiclass_hinge")
    assert old.multiclass_hkr is liptriton.ops.multiclass_hkr
    x = torch.randn(3, 4)
    target = torch.nn.functional.one_hot(torch.tensor([0, 1, 3]), 4).float()
    args = (target, torch.ones(4), torch.ones(4), 0.5)
    torch.testing.assert_close(old.multiclass_hkr(x, *args), liptriton.ops.multiclass_hkr(x, *args))


@pytest.mark.parametrize("name", ["certified_norm", "conv_bound", "conv_fourier", "conv_operator", "conv_reads",
                                  "gram_bound"])
def test_bounds_moved_out_of_ops(name):
    new = importlib.import_module(f"liptriton.bounds.{name}")
    sys.modules.pop(f"liptriton.ops.{name}", None)
    with pytest.warns(DeprecationWarning, match=f"import liptriton.bounds.{name}"):
        old = importlib.import_module(f"liptriton.ops.{name}")
    assert new.__all__ and all(getattr(old, n) is getattr(new, n) for n in new.__all__)


def test_ops_gram_spectral_bound_alias():
    from liptriton.bounds.gram_bound import gram_spectral_bound

    with pytest.warns(DeprecationWarning, match="liptriton.bounds.gram_bound.gram_spectral_bound"):
        assert liptriton.ops.gram_spectral_bound is gram_spectral_bound


def test_sqrt_eps_moved_to_functional():
    from liptriton.functional.sqrt_with_gradeps import sqrt_with_gradeps

    sys.modules.pop("liptriton.ops.sqrt_eps", None)
    with pytest.warns(DeprecationWarning, match="liptriton.functional.sqrt_with_gradeps"):
        old = importlib.import_module("liptriton.ops.sqrt_eps")
    assert old.sqrt_with_gradeps is sqrt_with_gradeps is liptriton.utils.sqrt_with_gradeps
