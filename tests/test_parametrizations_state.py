"""State, modes, serialization, bad input and mixed precision of the parametrizations."""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import load, save
from torch import nn
from torch.nn.utils import parametrize

import liptriton
from tests._measure import dense_singular_values
from tests._tolerances import BOUND_SLACK, assert_close

METHODS = ["spectral", "bjorck", "frobenius", "householder"]


def _net() -> nn.Sequential:
    net = nn.Sequential(
        liptriton.spectral(nn.Conv2d(2, 4, 3, padding=1)),
        nn.ReLU(),
        liptriton.bjorck(nn.Conv2d(4, 4, 3, stride=2)),
        nn.Flatten(),
        liptriton.householder(nn.Linear(36, 10)),
        nn.ReLU(),
        liptriton.frobenius(nn.Linear(10, 3), disjoint_neurons=False),
    )
    return net


def _train(net: nn.Module, steps: int, x: torch.Tensor) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = net(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_training_updates_state_and_eval_does_not():
    net, x = _net(), torch.randn(4, 2, 8, 8)
    net(x)
    conv_state = net[0].parametrizations.weight[0].conv.v.clone()  # the certificate's vectors
    _train(net, 2, x)
    assert not torch.equal(conv_state, net[0].parametrizations.weight[0].conv.v)
    net.eval()
    buffers = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net(x)
        net(x)
    for key, value in net.state_dict().items():
        assert torch.equal(value, buffers[key]), key


def test_eval_caches_until_parameter_changes():
    layer = liptriton.bjorck(nn.Linear(16, 8))
    p = layer.parametrizations.weight[0]
    calls = []
    compute = p.compute
    p.compute = lambda w: calls.append(1) or compute(w)
    layer.eval()  # converges the state and computes the eval weight
    at_switch = len(calls)
    assert at_switch >= 1
    with torch.no_grad():
        first = layer.weight.clone()
        layer(torch.randn(3, 16))
        layer(torch.randn(3, 16))
        assert len(calls) == at_switch  # reused
        layer.parametrizations.weight.original.add_(0.01)
        changed = layer.weight
        assert len(calls) == at_switch + 1 and not torch.equal(changed, first)
    assert_close(changed, liptriton.ops.bjorck(changed, 1), iterative=True)  # a converged weight is a fixed point


def test_eval_recomputes_when_gradients_flow():
    layer = liptriton.spectral(nn.Linear(6, 5)).eval()
    layer(torch.randn(2, 6)).sum().backward()
    assert layer.parametrizations.weight.original.grad is not None


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip_through_safetensors(method):
    def make():
        torch.manual_seed(1)
        return nn.Sequential(getattr(liptriton, method)(nn.Conv2d(3, 5, 3, padding=1)), nn.Flatten(),
                             getattr(liptriton, method)(nn.Linear(5 * 36, 4)))

    net, x = make(), torch.randn(2, 3, 6, 6)
    _train(net, 3, x)
    blob = save({k: v.contiguous() for k, v in net.state_dict().items()})
    restored = make()
    restored.load_state_dict(load(blob))
    net.eval(), restored.eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_remove_parametrizations_leaves_correct_weight(method):
    layer = getattr(liptriton, method)(nn.Linear(12, 7)).eval()
    with torch.no_grad():
        expected = layer.weight.clone()
    parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    assert not parametrize.is_parametrized(layer)
    assert type(layer) is nn.Linear and layer.weight.shape == (7, 12)
    torch.testing.assert_close(layer.weight.detach(), expected, rtol=0, atol=0)


def test_state_dict_keeps_learned_conv_input_size():
    layer = liptriton.spectral(nn.Conv2d(2, 3, 3))
    layer(torch.randn(1, 2, 11, 7))
    restored = liptriton.spectral(nn.Conv2d(2, 3, 3))
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)  # test-only: the library itself never unpickles
    buf.seek(0)
    restored.load_state_dict(torch.load(buf))
    assert restored.parametrizations.weight[0].conv.input_size == (11, 7)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: liptriton.bjorck(nn.Linear(3, 3), k=0), ValueError, r"bjorck\(Linear\): k must be"),
        (lambda: liptriton.spectral(nn.Linear(3, 3), k=-1.0), ValueError, "k must be a finite number > 0"),
        (lambda: liptriton.spectral(nn.Linear(3, 3), "bias_x"), ValueError, "no tensor named 'bias_x'"),
        (lambda: liptriton.bjorck(nn.Linear(3, 3), n_iters=0), ValueError, "n_iters must be an integer >= 1"),
        (lambda: liptriton.spectral(nn.Linear(3, 3), power_iters_init=0), ValueError, "power_iters_init"),
        (lambda: liptriton.bjorck(nn.Linear(3, 3), order=7), ValueError, "order must be 1, 2, 3 or 4"),
        (lambda: liptriton.householder(nn.Bilinear(3, 3, 2)), ValueError, "unsupported Bilinear.weight"),
        (lambda: liptriton.frobenius(_int_module()), TypeError, "must be a floating-point tensor"),
        (lambda: liptriton.spectral("not a module"), TypeError, "expected an nn.Module"),
    ],
    ids=["k0", "k-neg", "missing", "iters0", "init0", "order", "bilinear", "int", "not-module"],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _int_module() -> nn.Module:
    m = nn.Module()
    m.weight = nn.Parameter(torch.ones(3, 3, dtype=torch.int64), requires_grad=False)
    return m


@pytest.mark.parametrize("method", METHODS)
def test_bound_holds_under_bf16_autocast(method):
    layer = getattr(liptriton, method)(nn.Linear(16, 16))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    x = torch.randn(8, 16)
    for _ in range(5):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
            assert out.dtype == torch.bfloat16
            w = layer.weight
            assert w.dtype == torch.float32  # the constraint is computed in float32
            loss = out.float().square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        s = dense_singular_values(w)
        limit = 1.0 * (1 + BOUND_SLACK) * (1 if method != "frobenius" else 4.0)  # disjoint rows: sqrt(16)
        assert s.max() <= limit


@pytest.mark.parametrize("c_in, c_out, n", [(4, 6, 10), (8, 16, 12)], ids=["dense", "fourier"])
@pytest.mark.parametrize("method", ["bjorck", "spectral", "householder"])
def test_inference_mode_then_training(method, c_in, c_out, n):
    """A first forward (or an eval at a new input size) under torch.inference_mode creates the
    states' tensors there; training afterwards must update them (inference tensors refuse in-place
    updates outside inference mode), and the bound must still hold after each step."""
    from tests._measure import exact_conv_norm

    torch.manual_seed(0)
    model = nn.Sequential(getattr(liptriton, method)(nn.Conv2d(c_in, c_out, 3, padding=1)), nn.Flatten(),
                          getattr(liptriton, method)(nn.Linear(c_out * n * n, 3)))
    x = torch.randn(2, c_in, n, n)
    model.eval()
    with torch.inference_mode():
        model(x)  # first use: the conv's input size is learned here (its method: c_in, c_out, n)
    assert model[0].parametrizations.weight[0].conv.method == ("dense" if c_in == 4 else "fourier")
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
        assert exact_conv_norm(model[0], model[0].weight.detach(), (n, n)) <= 1 + BOUND_SLACK
    model.eval()
    with torch.inference_mode():
        ref = model(x)
    model.train()
    model(x).sum().backward()  # training again after an eval cache made under inference mode
    model.eval()
    assert_close(model(x), ref)  # outside inference mode the cache is updated in place (same weight)
