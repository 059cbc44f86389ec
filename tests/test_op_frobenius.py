"""Frobenius normalization op: Triton kernels (fused and split) against the torch reference."""

from __future__ import annotations

import importlib

import pytest
import torch

from liptriton.ops import frobenius_normalize, frobenius_normalize_reference
from tests._tolerances import assert_close

pytestmark = pytest.mark.interpreter

SHAPES = {
    "1": (1,),
    "7": (7,),
    "1x1": (1, 1),
    "7x7": (7, 7),
    "127x127": (127, 127),
    "wide7x127": (7, 127),
    "tall127x7": (127, 7),
    "conv5x3x3x3": (5, 3, 3, 3),
}


def _grads(fn, w, g):
    w = w.detach().requires_grad_(True)
    y = fn(w)
    (grad,) = torch.autograd.grad(y, w, g)
    return y.detach(), grad


def _rows(w, disjoint):
    return w.reshape(w.shape[0], -1) if disjoint and w.dim() > 1 else w.reshape(1, -1)


@pytest.mark.parametrize("disjoint", [False, True], ids=["whole", "disjoint"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_op_matches_reference(shape, disjoint, interpret, nan_empty):
    w = torch.randn(*shape)
    g = torch.randn(*shape)
    y, grad = _grads(lambda x: frobenius_normalize(x, disjoint), w, g)
    y_ref, grad_ref = _grads(lambda x: frobenius_normalize_reference(x, disjoint), w.double(), g.double())
    assert_close(y, y_ref)
    assert_close(grad, grad_ref)


@pytest.mark.parametrize("variant", ["fused", "split"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 127), (3, 5000)], ids=["1x1", "7x127", "3x5000"])
def test_variants_match_reference(shape, variant, interpret, nan_empty):
    from liptriton.kernels.frobenius import frobenius_backward, frobenius_forward

    for disjoint in (False, True):
        w, g = torch.randn(*shape), torch.randn(*shape)
        y_ref, grad_ref = _grads(lambda x: frobenius_normalize_reference(x, disjoint), w.double(), g.double())
        rows = _rows(w, disjoint)
        y = frobenius_forward(rows, 1e-12, variant=variant).reshape(shape)
        grad = frobenius_backward(_rows(g, disjoint), rows, 1e-12, variant=variant).reshape(shape)
        assert_close(y, y_ref)
        assert_close(grad, grad_ref)


def test_public_op_runs_the_kernel(interpret, monkeypatch):
    mod = importlib.import_module("liptriton.ops.frobenius")  # the package re-exports the function
    calls = []
    fwd, bwd = mod.frobenius_forward, mod.frobenius_backward
    monkeypatch.setattr(mod, "frobenius_forward", lambda *a, **k: calls.append("f") or fwd(*a, **k))
    monkeypatch.setattr(mod, "frobenius_backward", lambda *a, **k: calls.append("b") or bwd(*a, **k))
    w = torch.randn(4, 3, requires_grad=True)
    frobenius_normalize(w, True).sum().backward()
    assert calls == ["f", "b"]


def test_non_contiguous_and_expanded_grad(interpret, nan_empty):
    w = torch.randn(9, 6).mT  # (6, 9), transposed strides
    for disjoint in (False, True):
        y = frobenius_normalize(w.requires_grad_(True), disjoint)
        (grad,) = torch.autograd.grad(y.sum(), w)  # the incoming gradient is expanded (stride 0)
        y_ref = frobenius_normalize_reference(w.double(), disjoint)
        (grad_ref,) = torch.autograd.grad(y_ref.sum(), w)
        assert_close(y.detach(), y_ref.detach())
        assert_close(grad, grad_ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64], ids=["fp16", "fp64"])
def test_other_dtypes(dtype, interpret, nan_empty):
    w, g = torch.randn(7, 33, dtype=dtype), torch.randn(7, 33, dtype=dtype)
    y, grad = _grads(lambda x: frobenius_normalize(x, True), w, g)
    y_ref, grad_ref = _grads(lambda x: frobenius_normalize_reference(x, True), w, g)
    assert y.dtype == dtype and grad.dtype == dtype
    assert_close(y, y_ref)
    assert_close(grad, grad_ref)


def test_zero_tensor(interpret, nan_empty):
    w, g = torch.zeros(3, 4), torch.randn(3, 4)
    y, grad = _grads(lambda x: frobenius_normalize(x, True), w, g)
    y_ref, grad_ref = _grads(lambda x: frobenius_normalize_reference(x, True), w, g)
    assert torch.equal(y, torch.zeros(3, 4))
    assert_close(grad, grad_ref)


@pytest.mark.parametrize("disjoint", [False, True], ids=["whole", "disjoint"])
def test_unit_norm(disjoint, interpret):
    w = torch.randn(16, 3, 3, 3) * 7.0
    y = frobenius_normalize(w, disjoint)
    norms = _rows(y, disjoint).norm(dim=1)
    assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("disjoint", [False, True], ids=["whole", "disjoint"])
def test_reference_gradcheck(disjoint):
    w = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: frobenius_normalize_reference(x, disjoint), (w,))


@pytest.mark.parametrize("disjoint", [False, True], ids=["whole", "disjoint"])
def test_opcheck(disjoint):
    w = torch.randn(5, 3, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.liptriton.frobenius_normalize.default, (w, disjoint, 1e-12))
    g = torch.randn(5, 3, 2)
    torch.library.opcheck(torch.ops.liptriton.frobenius_normalize_backward.default,
                          (g, w.detach(), disjoint, 1e-12))


@pytest.mark.parametrize(
    "w, error, match",
    [
        (torch.ones(3, 3, dtype=torch.int64), TypeError, "w must be a floating-point tensor"),
        (torch.ones(0, 3), ValueError, "w must be a non-empty tensor"),
        (torch.tensor(2.0), ValueError, "w must be a non-empty tensor"),
    ],
    ids=["int", "empty", "scalar"],
)
def test_bad_inputs(w, error, match, interpret):
    with pytest.raises(error, match=f"frobenius_normalize: {match}"):
        frobenius_normalize(w)


def test_launcher_rejects_bad_input(interpret):
    from liptriton.kernels.frobenius import frobenius_backward, frobenius_forward

    with pytest.raises(ValueError, match="frobenius_forward: variant"):
        frobenius_forward(torch.randn(3, 4), 1e-12, variant="bogus")
    with pytest.raises(ValueError, match=r"frobenius_forward: expected a non-empty \(R, K\)"):
        frobenius_forward(torch.randn(3, 4, 2), 1e-12)
    with pytest.raises(ValueError, match="frobenius_backward: grad shape"):
        frobenius_backward(torch.randn(3, 5), torch.randn(3, 4), 1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["fused", "split"])
@pytest.mark.parametrize("disjoint", [False, True], ids=["whole", "disjoint"])
def test_gpu_large(variant, disjoint):
    from liptriton.kernels.frobenius import frobenius_backward, frobenius_forward

    w, g = torch.randn(512, 4608, device="cuda"), torch.randn(512, 4608, device="cuda")
    y_ref, grad_ref = _grads(lambda x: frobenius_normalize_reference(x, disjoint), w.double(), g.double())
    rows = _rows(w, disjoint)
    y = frobenius_forward(rows, 1e-12, variant=variant)
    grad = frobenius_backward(_rows(g, disjoint), rows, 1e-12, variant=variant)
    assert_close(y.reshape(w.shape), y_ref, dtype="gpu")
    assert_close(grad.reshape(w.shape), grad_ref, dtype="gpu")
    y, grad = _grads(lambda x: frobenius_normalize(x, disjoint), w, g)
    assert_close(y, y_ref, dtype="gpu")
    assert_close(grad, grad_ref, dtype="gpu")
