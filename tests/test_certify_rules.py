"""certify's rules account for every input (tensor bounds of clamp / max / where, broadcasting,
in-place writes), give no finite bound to discontinuous or random operations (with the reason),
and certify refuses what it cannot certify with a clear error (bad inputs, NaN weights, a lower
bound above the upper bound)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import liptriton
import liptriton._fn_rules as rules
from liptriton._fn_rules_basic import unary
from liptriton.certify import CertificateError


def _norm(layer: nn.Linear) -> float:
    return float(torch.linalg.matrix_norm(layer.weight.detach().double(), 2))


class Fn(nn.Module):
    """A model given by a function of (self, x); layers in self.a, self.b."""

    def __init__(self, fn, a: float = 1.0, b: float = 1.0, d: int = 4):
        super().__init__()
        self.fn, self.a, self.b = fn, nn.Linear(d, d), nn.Linear(d, d)
        with torch.no_grad():
            self.a.weight.mul_(a / _norm(self.a))
            self.b.weight.mul_(b / _norm(self.b))
        self.register_buffer("mask", torch.rand(d) > 0.5)
        self.register_buffer("row", torch.randn(1, 5, dtype=torch.float64))

    def forward(self, x):
        return self.fn(self, x)


def _cert(fn, x=None, **kw):
    x = torch.randn(8, 4) * 3 if x is None else x
    return liptriton.certify(Fn(fn, **kw), x, n_samples=4, power_iters=10, ascent_steps=2)


def test_clamp_with_a_tensor_bound_counts_the_bound():
    """Issue 18: clamp(a(x), min=b(x)), a 0.1- and b 10-Lipschitz, certified 0.1 and measured 10."""
    model = Fn(lambda m, x: torch.clamp(m.a(x), min=m.b(x)), a=0.1, b=10.0)
    cert = liptriton.certify(model, 3 * torch.randn(8, 4), power_iters=10, ascent_steps=2)
    assert cert.upper == pytest.approx(math.hypot(_norm(model.a), _norm(model.b)), rel=1e-9)
    assert 0.5 * cert.upper < cert.lower <= cert.upper


@pytest.mark.parametrize("op", ["maximum", "clamp", "where"])
def test_max_of_two_operands_is_the_quadrature_not_the_max(op):
    """max(x e1, x e2) = (relu x, relu x): sqrt(2)-Lipschitz although each operand is 1-Lipschitz."""
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])

    def fn(m, x):
        a, b = x[:, :1] * e1.to(x.dtype), x[:, :1] * e2.to(x.dtype)
        if op == "maximum":
            return torch.maximum(a, b)
        if op == "clamp":
            return a.clamp(min=b)
        return torch.where(torch.tensor([True, False]), a, b)  # (a_0, b_1) = (x, x)

    cert = _cert(fn, x=torch.rand(6, 4) + 0.5)
    assert cert.upper == pytest.approx(math.sqrt(2.0), rel=1e-9)
    assert cert.lower == pytest.approx(math.sqrt(2.0), rel=1e-6)


def test_broadcasting_counts_the_copies():
    cert = _cert(lambda m, x: x[:, :1] + m.row)  # one entry copied 5 times: sqrt(5)
    assert cert.upper == pytest.approx(math.sqrt(5.0), rel=1e-9) and cert.lower == pytest.approx(math.sqrt(5.0))
    model = Fn(lambda m, x: x[:, :1] * m.row)  # x0 * w: ||w||
    cert = liptriton.certify(model, torch.randn(4, 4))
    assert cert.upper == pytest.approx(float(model.row.norm()), rel=1e-9)
    assert cert.lower == pytest.approx(cert.upper, rel=1e-6)


@pytest.mark.parametrize("name,fn,why", [
    ("int cast", lambda m, x: x.to(torch.int64).to(torch.float32), "int64"),
    ("round", lambda m, x: torch.round(m.a(x)), "discontinuous"),
    ("floor division", lambda m, x: torch.div(m.a(x), 0.5, rounding_mode="floor"), "rounding_mode"),
    ("comparison feeding arithmetic", lambda m, x: (x > 0).float() * m.a(x), "discontinuous"),
    ("argmax as data", lambda m, x: x.argmax(dim=1, keepdim=True).float() + x, "discontinuous"),
    ("data-dependent where", lambda m, x: torch.where(m.a(x) > 0, m.a(x), m.b(x)), "discontinuous"),
    ("data-dependent mask", lambda m, x: m.a(x).masked_fill(x > 0, 1.0), "discontinuous"),
    ("input-dependent indices", lambda m, x: x.gather(1, x.argsort(dim=1)), "discontinuous"),
    ("no rule", lambda m, x: torch.exp(x), "no Lipschitz rule for function exp"),
    ("random", lambda m, x: x + torch.randn_like(x), "random"),
    ("training dropout", lambda m, x: F.dropout(x, 0.5), "random"),
    ("product of two inputs", lambda m, x: m.a(x) * m.b(x), "two input-dependent"),
    ("max with its indices", lambda m, x: torch.max(m.a(x), dim=1), "integer part (indices)"),
    ("indices attribute", lambda m, x: torch.max(m.a(x), dim=1).indices.float(), "discontinuous"),
])
def test_discontinuous_random_and_unknown_ops_have_no_finite_bound(name, fn, why):
    cert = _cert(fn)
    assert cert.upper == math.inf, name
    assert any(why in reason for _, reason in cert.unbounded), cert.unbounded


@pytest.mark.parametrize("name,fn,expected", [
    ("max values", lambda m, x: torch.max(x.view(-1, 2, 2), dim=2).values, 1.0),
    ("chunks reversed", lambda m, x: torch.cat(x.chunk(2, 1)[::-1], 1) * 2, 2.0),
    ("reflect padding", lambda m, x: F.pad(x.view(-1, 1, 4), (2, 3), mode="reflect"), math.sqrt(3.0)),
    ("repeat", lambda m, x: x.repeat(1, 3), math.sqrt(3.0)),
    ("tuple output", lambda m, x: (2 * x, x[:, :2]), math.sqrt(5.0)),
])
def test_selections_and_tuples_are_exact(name, fn, expected):
    cert = _cert(fn)
    assert cert.upper == pytest.approx(expected, rel=1e-9), name
    assert cert.lower == pytest.approx(expected, rel=1e-4) and cert.lower <= cert.upper * (1 + 1e-9), name


def test_in_place_writes_are_accounted_for():
    def scaled(m, x):
        h = m.a(x)
        h.mul_(10.0)  # h is read afterwards: its bound is 10
        return h

    cert = _cert(scaled)
    assert cert.upper == pytest.approx(10.0, rel=1e-6) and cert.lower == pytest.approx(cert.upper, rel=1e-6)

    def through_a_view(m, x):
        h = m.a(x)
        v = h.view(-1, 2, 2)
        h.mul_(10.0)  # v aliases h: no rule tracks the write through it
        return v.flatten(1)

    cert = _cert(through_a_view)
    assert cert.upper == math.inf and any("in place" in why for _, why in cert.unbounded)

    def residual(m, x):
        out = m.a(x)
        out += x  # torchvision's ResNet pattern
        return torch.relu(out)

    cert = _cert(residual, a=0.5)
    assert cert.upper == pytest.approx(1.5, rel=1e-6) and cert.lower <= cert.upper


def test_leaf_called_with_two_input_dependent_tensors_has_no_bound():
    class Pair(nn.Module):
        def lipschitz_bound(self):
            return 1.0

        def forward(self, x, y):
            return x + y

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x, 3.0 * x)

    cert = liptriton.certify(Net(), torch.randn(4, 3), n_samples=1, power_iters=2)
    assert cert.upper == math.inf and "more input-dependent" in cert.unbounded[0][1]


def test_float_casts_are_the_identity():
    """A float32 output (autocast code): certified as the identity; its rounding is not a bug."""
    cert = liptriton.certify(Fn(lambda m, x: m.a(x).float(), a=2.0), torch.randn(4, 4))
    assert cert.upper == pytest.approx(2.0, rel=1e-6) and cert.lower == pytest.approx(cert.upper, rel=1e-4)


def test_a_rule_that_raises_gives_no_bound_not_a_crash(monkeypatch):
    def broken(node, ctx):
        raise TypeError("an argument form the rule does not handle")

    monkeypatch.setitem(rules.RULES, torch.tanh, broken)
    cert = _cert(lambda m, x: torch.tanh(m.a(x)))
    assert cert.upper == math.inf and "does not handle this call (TypeError" in cert.unbounded[0][1]


def test_a_lower_bound_above_the_upper_bound_is_an_error_naming_the_node(monkeypatch):
    monkeypatch.setitem(rules.RULES, torch.tanh, lambda n, c: unary(n, c, 0.01, "a wrong rule"))
    with pytest.raises(CertificateError, match="node 'tanh'.*a wrong rule.*bug of liptriton"):
        _cert(lambda m, x: torch.tanh(m.a(x)), a=1.0, x=0.1 * torch.randn(4, 4))


@pytest.mark.parametrize("shape,match", [((16,), "1-D example_input"), ((2, 3, 28, 28), r"shape \(2, 3, 28, 28\)"),
                                         ((2, 1, 32, 32), "Expected a batch")])
def test_inputs_the_model_cannot_take_give_a_clear_error(shape, match, capfd):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2)) if len(shape) > 1 else \
        nn.Linear(16, 2)
    with pytest.raises(ValueError, match=match) as info:
        liptriton.certify(net, torch.randn(*shape))
    assert "certify: the model cannot run on example_input" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "GraphModule" not in out + err


def test_non_finite_weights_are_named():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[2].weight[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"parameter '2.weight' has 1 NaN / inf entries of 8"):
        liptriton.certify(net, torch.randn(3, 4))
    spec = nn.Sequential(liptriton.spectral(nn.Linear(4, 4)))
    with torch.no_grad():
        spec[0].parametrizations.weight.original[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"'0.parametrizations.weight.original'"):
        liptriton.certify(spec, torch.randn(3, 4))
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    bn[1].running_var[2] = float("nan")
    with pytest.raises(ValueError, match=r"buffer '1.running_var'"):
        liptriton.certify(bn, torch.randn(3, 4))
