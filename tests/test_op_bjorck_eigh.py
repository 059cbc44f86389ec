"""Björck through one eigendecomposition (the eager CPU training path) against the direct
iteration on ``w / ||w||_2`` in float64 (values and gradients, the division included), its
float32 bound on ill-conditioned weights, degenerate spectra, non-finite weights, and the
parametrization that takes it."""

from __future__ import annotations

import sys

import pytest
import torch

import liptriton
from liptriton.ops import bjorck_reference
from liptriton.ops.bjorck_eigh import bjorck_eigh, eigh_pays

eigh_module = sys.modules["liptriton.ops.bjorck_eigh"]

SHAPES = {"wide": (6, 40), "tall": (40, 6), "square": (12, 12), "batch": (3, 7, 30), "tiny": (2, 3)}


def _rand(shape, seed, scale=3.0):
    return scale * torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _reference(w, n_iters, order=1):
    return bjorck_reference(w / torch.linalg.matrix_norm(w, 2)[..., None, None], n_iters, order)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("n_iters", [1, 2, 5, 12, 15])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_equals_the_direct_iteration_on_the_normalized_weight(shape, n_iters, order):
    w = _rand(shape, n_iters * 10 + order)
    q, top = bjorck_eigh(w, n_iters, order)
    torch.testing.assert_close(q, _reference(w, n_iters, order), rtol=1e-6, atol=1e-9)
    # top: the top singular vector on the smaller side
    x = w if shape[-2] <= shape[-1] else w.mT
    sigma = torch.linalg.matrix_norm(w, 2)
    torch.testing.assert_close((x.mT @ top.unsqueeze(-1)).squeeze(-1).norm(dim=-1), sigma, rtol=1e-9, atol=0)


GRAD_SHAPES = {"wide": (5, 23), "tall": (23, 5), "batch": (2, 4, 9), "square": (8, 8)}


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked", "loop"])
@pytest.mark.parametrize("order", [1, 2, 4])
@pytest.mark.parametrize("shape", GRAD_SHAPES.values(), ids=GRAD_SHAPES.keys())
def test_gradient_equals_autograd_of_the_direct_iteration(shape, order, stacked, monkeypatch):
    # both ways to the divided differences: every step at once (small sides), one step at a time
    monkeypatch.setattr(eigh_module, "_STACK_SIDE", 10**6 if stacked else 0)
    w = _rand(shape, 7 + order)
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = w.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(bjorck_eigh(a, 9, order)[0], a, g)
    b = w.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(_reference(b, 9, order), b, g)
    torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-10)
    small = w[..., :4, :6].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: bjorck_eigh(x, 3, order)[0], (small,))


def test_degenerate_spectrum_has_a_finite_gradient():
    # an orthogonal weight (every singular value equal): no 1 / (lambda_i - lambda_j) anywhere
    w = torch.linalg.qr(_rand((30, 8), 3))[0].mT.contiguous().requires_grad_(True)
    q, _ = bjorck_eigh(w, 12)
    torch.testing.assert_close(q, w.detach(), rtol=0, atol=1e-12)
    (grad,) = torch.autograd.grad((q * torch.randn_like(q)).sum(), w)
    assert torch.isfinite(grad).all()
    # repeated eigenvalues below the top one: the same gradient as the direct iteration
    u, _, vh = torch.linalg.svd(_rand((6, 20), 4), full_matrices=False)
    s = torch.tensor([2.0, 1.0, 1.0, 1.0, 0.5, 0.5], dtype=torch.float64)
    w = (u * s) @ vh
    g = torch.randn_like(w)
    a, b = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    (ga,) = torch.autograd.grad(bjorck_eigh(a, 6)[0], a, g)
    (gb,) = torch.autograd.grad(_reference(b, 6), b, g)
    torch.testing.assert_close(ga, gb, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("cond", [1e1, 1e3, 1e5, 1e7])
def test_float32_ill_conditioned_keeps_the_bound(cond):
    g = torch.Generator().manual_seed(int(cond))
    u, _, vh = torch.linalg.svd(torch.randn(64, 512, dtype=torch.float64, generator=g), full_matrices=False)
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), 64, dtype=torch.float64)
    w = 5.0 * (u @ torch.diag(s) @ vh)
    out, _ = bjorck_eigh(w.float(), 15)
    assert out.dtype == torch.float32
    assert float(torch.linalg.svdvals(out.double()).max()) <= 1 + 1e-6
    assert float((out.double() - _reference(w, 15)).abs().max()) < 1e-6


def test_non_finite_and_zero_weights():
    w = _rand((4, 9), 0).float()
    w[1, 2] = float("nan")
    q, _ = bjorck_eigh(w, 5)  # no LinAlgError: a NaN weight gives a NaN result
    assert torch.isnan(q).any()
    q, _ = bjorck_eigh(torch.zeros(3, 7), 5)
    assert torch.equal(q, torch.zeros(3, 7))


def test_checks_and_choice():
    with pytest.raises(ValueError, match="n_iters"):
        bjorck_eigh(torch.randn(3, 4), 0)
    with pytest.raises(ValueError, match="order"):
        bjorck_eigh(torch.randn(3, 4), 3, order=5)
    cpu = torch.device("cpu")
    assert eigh_pays((64, 2048), cpu) and eigh_pays((3, 16, 9), cpu) and eigh_pays((64, 64), cpu)
    assert eigh_pays((512, 4608), cpu) and eigh_pays((300, 128), cpu)
    assert not eigh_pays((1, 64), cpu) and not eigh_pays((1024, 4096), cpu) and not eigh_pays((128, 200), cpu)
    assert not eigh_pays((64, 2048), torch.device("meta"))


@pytest.mark.parametrize("layer", [torch.nn.Linear(48, 20), torch.nn.Conv2d(3, 8, 3)], ids=["linear", "conv"])
def test_parametrization_trains_through_it_and_keeps_the_pair(layer, monkeypatch):
    torch.manual_seed(0)
    liptriton.bjorck(layer)
    p = layer.parametrizations.weight[0]
    calls = []
    module = sys.modules["liptriton.parametrizations.bjorck"]  # the module (the package exports the function)
    monkeypatch.setattr(module, "bjorck_eigh", lambda *a: calls.append(a) or bjorck_eigh(*a))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        wb = p.layout.to_batch(layer.parametrizations.weight.original.detach()).double()
        shape = (48,) if isinstance(layer, torch.nn.Linear) else (3, 10, 10)
        layer(torch.randn(4, *shape)).square().sum().backward()
        opt.step()
    assert len(calls) == 5
    # the stored pair is the exact top singular pair of the parameter the last forward saw
    sigma = torch.linalg.matrix_norm(wb, 2)
    est = (p.state.u.double().unsqueeze(-2) @ wb @ p.state.v.double().unsqueeze(-1)).flatten()
    torch.testing.assert_close(est, sigma, rtol=1e-5, atol=0)
    w = p.layout.to_batch(layer.weight.detach()).double()  # the applied weight (training mode, new parameter)
    if isinstance(layer, torch.nn.Linear):
        s = torch.linalg.svdvals(w)
        assert float(s.max()) <= 1 + 1e-6 and float(s.min()) >= 0.98
    layer.eval()  # the eval weight (iterative path from the stored pair) is the training one, converged
    torch.testing.assert_close(p.layout.to_batch(layer.weight.detach()).double(), w, rtol=0, atol=2e-4)


@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_opcheck_of_the_compiled_graphs_ops(transposed):
    x = _rand((2, 20, 6), 5).mT if transposed else _rand((2, 6, 20), 5)  # a tall weight arrives transposed
    torch.library.opcheck(torch.ops.liptriton.bjorck_eigh, (x, 5, [1.5, -0.5]))
    _, _, *saved = torch.ops.liptriton.bjorck_eigh(x, 5, [1.5, -0.5])
    dq = torch.randn(2, 20, 6, dtype=torch.float64).mT if transposed else torch.randn_like(x)
    torch.library.opcheck(torch.ops.liptriton.bjorck_eigh_backward, (dq, x, *saved, [1.5, -0.5]))


@pytest.mark.parametrize("make", [lambda: torch.nn.Linear(40, 12), lambda: torch.nn.Conv2d(1, 8, 3)],
                         ids=["wide", "tall"])
def test_compiled_layer_calls_the_ops_and_matches_eager(make):
    torch.manual_seed(0)
    lin = liptriton.bjorck(make())
    x = torch.randn(5, 40) if isinstance(lin, torch.nn.Linear) else torch.randn(5, 1, 6, 6)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    loss = torch.compile(lambda: lin(x).square().sum(), backend=backend, fullgraph=True)()
    loss.backward()
    assert any("liptriton.bjorck_eigh" in t for t in seen), seen
    grad = lin.parametrizations.weight.original.grad.clone()
    lin.zero_grad()
    eager = lin(x).square().sum()
    eager.backward()
    torch.testing.assert_close(loss, eager)
    torch.testing.assert_close(grad, lin.parametrizations.weight.original.grad)


def test_a_second_derivative_raises_instead_of_missing_terms():
    w = _rand((4, 9), 2).requires_grad_(True)
    (g,) = torch.autograd.grad(bjorck_eigh(w, 5)[0].sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g.sum(), w)


def test_torch_func_transforms_keep_the_iteration():
    seen = []

    def f(w):
        seen.append(eigh_pays(w.shape, w.device))  # the autograd.Function has no functorch rule
        return w.square().sum()

    torch.func.grad(f)(torch.randn(4, 9))
    assert seen == [False] and eigh_pays((4, 9), torch.device("cpu"))
