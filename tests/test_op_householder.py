"""Householder product op: Triton forward/backward kernels against the torch reference."""

from __future__ import annotations

import importlib

import pytest
import torch

from liptriton.ops import householder_product, householder_product_reference
from tests._tolerances import assert_close

pytestmark = pytest.mark.interpreter

# (r, rows, cols): r reflections of dimension d = max(rows, cols).
CASES = {
    "1x1": (1, 1, 1),
    "7x7": (7, 7, 7),
    "7x7-r3": (3, 7, 7),
    "127x127": (127, 127, 127),
    "wide7x127": (20, 7, 127),
    "tall127x7": (20, 127, 7),
    "wide4x7": (7, 4, 7),
}


def _grads(fn, v, g):
    v = v.detach().requires_grad_(True)
    y = fn(v)
    (grad,) = torch.autograd.grad(y, v, g)
    return y.detach(), grad


def _orthonormality_error(q):
    gram = q @ q.mT if q.shape[0] <= q.shape[1] else q.mT @ q
    return (gram - torch.eye(gram.shape[0], dtype=q.dtype)).abs().max()


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_op_matches_reference(case, interpret, nan_empty):
    r, rows, cols = case
    v, g = torch.randn(r, max(rows, cols)), torch.randn(rows, cols)
    y, grad = _grads(lambda x: householder_product(x, rows, cols), v, g)
    y_ref, grad_ref = _grads(lambda x: householder_product_reference(x, rows, cols), v.double(), g.double())
    assert_close(y, y_ref)
    assert_close(grad, grad_ref)


@pytest.mark.parametrize("case", [(7, 5, 9), (5, 9, 5), (9, 9, 9)], ids=["wide5x9", "tall9x5", "9x9"])
def test_many_column_blocks(case, interpret, nan_empty):
    """Several programs: the backward adds their partial gradients atomically."""
    from liptriton.kernels.householder import householder_backward, householder_forward

    r, rows, cols = case
    v, g = torch.randn(r, max(rows, cols)), torch.randn(rows, cols)
    y_ref, grad_ref = _grads(lambda x: householder_product_reference(x, rows, cols), v.double(), g.double())
    assert_close(householder_forward(v, rows, cols, 1e-12, block_c=2), y_ref)
    assert_close(householder_backward(g, v, rows, cols, 1e-12, block_c=2), grad_ref)


def test_public_op_runs_the_kernel(interpret, monkeypatch):
    mod = importlib.import_module("liptriton.ops.householder")  # the package re-exports the function
    calls = []
    fwd, bwd = mod.householder_forward, mod.householder_backward
    monkeypatch.setattr(mod, "householder_forward", lambda *a, **k: calls.append("f") or fwd(*a, **k))
    monkeypatch.setattr(mod, "householder_backward", lambda *a, **k: calls.append("b") or bwd(*a, **k))
    v = torch.randn(3, 4, requires_grad=True)
    householder_product(v, 4, 2).sum().backward()
    assert calls == ["f", "b"]


def test_zero_rows_and_expanded_grad(interpret, nan_empty):
    v = torch.randn(4, 6)
    v[1] = 0.0  # a zero vector is the identity reflection
    v = v.mT.contiguous().mT  # non-contiguous
    y = householder_product(v.requires_grad_(True), 6, 3)
    (grad,) = torch.autograd.grad(y.sum(), v)  # expanded incoming gradient (stride 0)
    v64 = v.detach().double().requires_grad_(True)
    y_ref = householder_product_reference(v64, 6, 3)
    (grad_ref,) = torch.autograd.grad(y_ref.sum(), v64)
    assert_close(y.detach(), y_ref.detach())
    assert_close(grad, grad_ref)
    assert torch.equal(grad[1], torch.zeros(6))


def test_no_reflections_is_identity_block(interpret):
    v = torch.zeros(0, 5, requires_grad=True)
    q = householder_product(v, 3, 5)
    assert torch.equal(q, torch.eye(3, 5))
    q.sum().backward()
    assert v.grad.shape == (0, 5)


@pytest.mark.parametrize("shape", [(9, 9), (5, 12), (12, 5)], ids=["square", "wide", "tall"])
def test_orthonormal_float64(shape, interpret, nan_empty):
    rows, cols = shape
    v = torch.randn(max(rows, cols), max(rows, cols), dtype=torch.float64)
    q = householder_product(v, rows, cols)
    assert q.dtype == torch.float64
    assert _orthonormality_error(q) < 1e-12


def test_float16_input(interpret, nan_empty):
    v, g = torch.randn(5, 8, dtype=torch.float16), torch.randn(8, 6, dtype=torch.float16)
    y, grad = _grads(lambda x: householder_product(x, 8, 6), v, g)
    y_ref, grad_ref = _grads(lambda x: householder_product_reference(x, 8, 6), v, g)
    assert y.dtype == torch.float16 and grad.dtype == torch.float16
    assert_close(y, y_ref)
    assert_close(grad, grad_ref)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4), (4, 2)], ids=["square", "wide", "tall"])
def test_reference_gradcheck(shape):
    rows, cols = shape
    v = torch.randn(3, max(rows, cols), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: householder_product_reference(x, rows, cols), (v,))


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 3)], ids=["square", "wide", "tall"])
def test_opcheck(shape):
    rows, cols = shape
    v = torch.randn(3, max(rows, cols), requires_grad=True)
    torch.library.opcheck(torch.ops.liptriton.householder_product.default, (v, rows, cols, 1e-12))
    g = torch.randn(rows, cols)
    torch.library.opcheck(torch.ops.liptriton.householder_product_backward.default,
                          (g, v.detach(), rows, cols, 1e-12))


@pytest.mark.parametrize(
    "v, rows, cols, error, match",
    [
        (torch.ones(3, 4, dtype=torch.int64), 4, 4, TypeError, "v must be a floating-point tensor"),
        (torch.ones(4), 4, 4, ValueError, r"v must have shape \(r, d\)"),
        (torch.ones(3, 5), 4, 4, ValueError, "v must have d = max"),
        (torch.ones(3, 4), 0, 4, ValueError, "v must have d = max"),
    ],
    ids=["int", "1d", "wrong-d", "zero-rows"],
)
def test_bad_inputs(v, rows, cols, error, match, interpret):
    with pytest.raises(error, match=f"householder_product: {match}"):
        householder_product(v, rows, cols)


def test_launcher_rejects_bad_input(interpret):
    from liptriton.kernels.householder import householder_backward, householder_forward

    with pytest.raises(ValueError, match="householder_forward: block_c must be a power of two"):
        householder_forward(torch.randn(2, 4), 4, 4, 1e-12, block_c=3)
    with pytest.raises(ValueError, match="householder_backward: grad must be"):
        householder_backward(torch.randn(3, 4), torch.randn(2, 4), 4, 4, 1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(512, 512), (256, 768), (768, 256)], ids=["square", "wide", "tall"])
def test_gpu_large(shape):
    rows, cols = shape
    d = max(rows, cols)
    v, g = torch.randn(d, d, device="cuda"), torch.randn(rows, cols, device="cuda")
    y, grad = _grads(lambda x: householder_product(x, rows, cols), v, g)
    y_ref, grad_ref = _grads(lambda x: householder_product_reference(x, rows, cols), v.double(), g.double())
    assert_close(y, y_ref, dtype="gpu")
    assert_close(grad, grad_ref, dtype="gpu", iterative=True)
    assert _orthonormality_error(y.double()) < 1e-4
