"""Functions of deel-torchlip 1.0.5 (functional, normalizers, init, utils) against liptriton's, on
fresh random inputs: equal values and gradients where the math is the same, the documented
difference where liptriton differs on purpose (docs/guide.md, "Migrating from deel-torchlip")."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import liptriton
import liptriton.functional as LF
from tests._deel import assert_same, run
from tests._measure import OperatorNorm, dense_singular_values, plain_conv
from tests._tolerances import BOUND_SLACK, assert_close

deel = pytest.importorskip("deel.torchlip")
DF = deel.functional


def _x(*shape):
    return torch.randn(*shape, requires_grad=True)


def _pm1(n, c=1):
    t = torch.randint(0, 2, (n, c)).float() * 2 - 1
    t[0], t[1] = 1, -1  # both classes (the KR terms need both)
    return t


def _onehot(n, c):
    return nn.functional.one_hot(torch.arange(n) % c, c).float()[torch.randperm(n)]


# name -> (positional args, keyword args), the same for both libraries
FUNCTIONAL = {
    "max_min": lambda: ((_x(4, 6, 3),), {}),
    "group_sort": lambda: ((_x(5, 12), 4), {}),
    "group_sort_2": lambda: ((_x(5, 8, 3),), {}),
    "full_sort": lambda: ((_x(5, 7),), {}),
    "lipschitz_prelu": lambda: ((_x(6, 3, 4), torch.randn(3, requires_grad=True) * 2), {"k_coef_lip": 1.0}),
    "apply_reduction": lambda: ((_x(9), "sum"), {}),
    "kr_loss": lambda: ((_x(10, 1), _pm1(10)), {}),
    "kr_loss_standard": lambda: ((_x(10, 3), _pm1(10, 3)), {}),
    "kr_loss_multi_gpu": lambda: ((_x(10, 3), DF.process_labels_for_multi_gpu(_pm1(10, 3))), {}),
    "neg_kr_loss": lambda: ((_x(10, 1), _pm1(10)), {"multi_gpu": False}),
    "hinge_margin_loss": lambda: ((_x(10, 1), _pm1(10), 0.7), {}),
    "hkr_loss": lambda: ((_x(10, 1), _pm1(10), 0.8, 0.5), {}),
    "hinge_multiclass_loss": lambda: ((_x(10, 4), _onehot(10, 4), 0.6), {}),
    "hkr_multiclass_loss": lambda: ((_x(10, 4), _onehot(10, 4), 0.9, 1.0), {}),
    "process_labels_for_multi_gpu": lambda: ((_pm1(12, 2),), {}),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONAL))
def test_functional_same_values_and_gradients(name):
    args, kwargs = FUNCTIONAL[name]()
    assert_same(run(getattr(LF, name), args, kwargs), run(getattr(DF, name), args, kwargs))


def test_lipschitz_prelu_is_exactly_k_lipschitz_where_deel_is_not():
    # documented difference at k != 1: deel-torchlip clamps the slope to [-k, k] and does not scale
    x, a = torch.randn(6, 3, 4), torch.tensor([0.3, -2.0, 1.4])
    for k in (0.5, 1.5):
        ours = LF.lipschitz_prelu(x, a, k)
        torch.testing.assert_close(ours, k * nn.functional.prelu(x, a.clamp(-1, 1)))
        torch.testing.assert_close(DF.lipschitz_prelu(x, a, k), nn.functional.prelu(x, a.clamp(-k, k)))


@pytest.mark.parametrize(("pad", "onedim", "shape"), [(2, False, (2, 3, 5, 6)), ((1, 3), False, (1, 2, 4, 5)),
                                                      (3, True, (2, 3, 7)), ((2,), True, (1, 1, 4))])
def test_symmetric_pad_same_values_and_gradients(pad, onedim, shape):
    x = _x(*shape)
    ours, theirs = LF.SymmetricPad(pad, onedim=onedim), DF.SymmetricPad(pad, onedim=onedim)
    assert ours.pad == theirs.pad
    assert_same(run(ours, (x,)), run(theirs, (x,)))


def test_symmetric_pad_with_a_zero_side_pads_nothing_there():
    # documented difference: deel-torchlip's x[..., -0:] copies the whole tensor for a zero pad
    x = torch.randn(1, 1, 4, 5)
    assert LF.SymmetricPad((0, 2))(x).shape == (1, 1, 4, 9)
    assert DF.SymmetricPad((0, 2))(x).shape == (1, 1, 8, 9)


def test_normalizers_same_values_and_gradients():
    w = torch.randn(6, 10, requires_grad=True)
    u = torch.randn(1, 10)
    assert_same(run(lambda w: liptriton.normalizers.spectral_normalization(w, u)[0], (w,)),
                run(lambda w: deel.normalizers.spectral_normalization(w, u)[0], (w,)))
    for wid in (torch.randn(7, 4), torch.randn(3, 2, 3)):  # tall and wide (C, *) kernels
        w = (wid / torch.linalg.matrix_norm(wid.reshape(wid.shape[0], -1), 2) * 0.95).requires_grad_(True)
        for kwargs in ({}, {"eps": 1e-6, "beta": 0.4, "maxiter": 30}):
            assert_same(run(liptriton.normalizers.bjorck_normalization, (w,), kwargs),
                        run(deel.normalizers.bjorck_normalization, (w,), kwargs), iterative=True)
    # without u: a random start from the global generator, the same draws
    torch.manual_seed(5)
    ours = liptriton.normalizers.spectral_normalization(w.detach().reshape(3, -1))
    torch.manual_seed(5)
    theirs = deel.normalizers.spectral_normalization(w.detach().reshape(3, -1))
    for a, b in zip(ours, theirs):
        assert_close(a, b)


@pytest.mark.parametrize("name", ["spectral_", "bjorck_"])
def test_init_same_values_and_warning(name):
    w0 = torch.randn(5, 8)
    ours, theirs = w0.clone(), w0.clone()
    torch.manual_seed(11)
    with pytest.warns(UserWarning, match="deprecated"):
        getattr(liptriton.init, name)(ours)
    torch.manual_seed(11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(deel.init, name)(theirs)
    assert_close(ours, theirs, iterative=True)
    if name == "bjorck_":
        assert dense_singular_values(ours).min() > 0.99


def test_sqrt_with_gradeps_same_values_and_gradients():
    x = torch.rand(20).requires_grad_(True)
    with torch.no_grad():
        x[:3] = 0
    for eps in (1e-6, 0.1):
        assert_same(run(liptriton.utils.sqrt_with_gradeps, (x, eps)),
                    run(deel.utils.sqrt_with_gradeps, (x, eps)))


def test_frobenius_norm_and_its_removal_same_values_and_gradients():
    for disjoint in (True, False):
        lin = nn.Linear(6, 3)
        ours, theirs = nn.Linear(6, 3), nn.Linear(6, 3)
        ours.load_state_dict(lin.state_dict())
        theirs.load_state_dict(lin.state_dict())
        liptriton.utils.frobenius_norm(ours, disjoint_neurons=disjoint)
        deel.utils.frobenius_norm(theirs, disjoint_neurons=disjoint)
        x = _x(4, 6)
        assert_same(run(ours, (x,)), run(theirs, (x,)))
        liptriton.utils.remove_frobenius_norm(ours)
        deel.utils.remove_frobenius_norm(theirs)
        assert not parametrize.is_parametrized(ours)
        assert_close(ours.weight.detach(), theirs.weight.detach())


def test_bjorck_norm_reaches_the_same_orthogonal_weight():
    # same fixed point (the polar factor); liptriton runs a fixed number of steps with spectral
    # pre-normalization included, deel-torchlip stops at eps = 1e-3: equal within that tolerance
    w = torch.randn(8, 5)
    ours, theirs = nn.Linear(5, 8), nn.Linear(5, 8)
    for m in (ours, theirs):
        with torch.no_grad():
            m.weight.copy_(w / torch.linalg.matrix_norm(w, 2))
    liptriton.utils.bjorck_norm(ours)
    deel.utils.bjorck_norm(theirs)
    torch.testing.assert_close(ours.eval().weight, theirs.eval().weight, rtol=0, atol=2e-3)
    liptriton.utils.remove_bjorck_norm(ours)
    assert dense_singular_values(ours.weight).min() > 0.999


def test_lconv_norm_is_tighter_than_deel():
    # documented difference: liptriton divides by the operator norm (layer reaches 1), deel-torchlip
    # by sqrt(ceil(kh / sh) ceil(kw / sw)) (a bound: the layer stays below 1)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    ours, theirs = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    ours.load_state_dict(conv.state_dict())
    theirs.load_state_dict(conv.state_dict())
    liptriton.utils.lconv_norm(ours)
    deel.utils.lconv_norm(theirs)
    ours(torch.randn(1, 4, 8, 8))
    norm = OperatorNorm((4, 8, 8))
    n_ours = norm(plain_conv(ours, ours.eval().weight))
    n_theirs = OperatorNorm((4, 8, 8))(plain_conv(theirs, theirs.weight))
    assert 0.99 <= n_ours <= 1 + BOUND_SLACK
    assert n_theirs < n_ours
    ratio = (ours.weight / theirs.weight).detach()  # the same kernel direction, rescaled
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.mean())), rtol=1e-4, atol=0)


def _net():
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("evaluation_type", ["jacobian_norm", "noise_norm", "attack", "all",
                                             ["noise_norm", "jacobian_norm"]])
@pytest.mark.parametrize("disjoint_neurons", [False, True])
@pytest.mark.parametrize("conv", [False, True], ids=["dense", "conv"])
def test_evaluate_lip_const_same_values(evaluation_type, disjoint_neurons, conv):
    if conv:
        net, x = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh()), torch.randn(4, 2, 6)
    else:
        net, x = _net(), torch.randn(5, 6)
    kwargs = {"num_iterations": 5, "num_noisy_samples": 4}
    torch.manual_seed(3)
    ours = liptriton.utils.evaluate_lip_const(net, x, evaluation_type, disjoint_neurons, **kwargs)
    torch.manual_seed(3)
    theirs = deel.utils.evaluate_lip_const(net, x, evaluation_type, disjoint_neurons, **kwargs)
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_evaluate_lip_const_input_shape_seed_and_expected_value():
    net = _net()
    torch.manual_seed(1)
    theirs = deel.utils.evaluate_lip_const(net, input_shape=(4, 6), evaluation_type="noise_norm", seed=42)
    torch.manual_seed(1)
    state = torch.get_rng_state()
    ours = liptriton.utils.evaluate_lip_const(net, input_shape=(4, 6), evaluation_type="noise_norm")
    assert ours == pytest.approx(theirs, rel=1e-5)
    # seed: reproducible, and the global generator is left as it was
    torch.set_rng_state(state)
    a = liptriton.utils.evaluate_lip_const(net, input_shape=(4, 6), evaluation_type="attack", seed=42,
                                           num_iterations=3)
    assert torch.equal(torch.get_rng_state(), state)
    b = liptriton.utils.evaluate_lip_const(net, input_shape=(4, 6), evaluation_type="attack", seed=42,
                                           num_iterations=3)
    assert a == b
    x = torch.randn(3, 6)
    value = liptriton.utils.evaluate_lip_const(net, x)
    assert liptriton.utils.evaluate_lip_const(net, x, expected_value=value) == value
    for lib in (liptriton, deel):
        with pytest.raises(AssertionError, match="higher than expected value"):
            lib.utils.evaluate_lip_const(net, x, expected_value=value * 0.5)
    with pytest.raises(ValueError, match="input_shape"):
        liptriton.utils.evaluate_lip_const(net)
    with pytest.raises(ValueError, match="evaluation_type must be one of"):
        liptriton.utils.evaluate_lip_const(net, x, evaluation_type="sampling")
