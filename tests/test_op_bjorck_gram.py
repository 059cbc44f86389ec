"""Björck in Gram space against the direct iteration (float64 reference, values and gradients),
and its float32 accuracy on ill-conditioned weights (the bound must survive the rounding)."""

from __future__ import annotations

import sys

import pytest
import torch

from liptriton.ops import (
    bjorck_gram,
    bjorck_gram_reference,
    bjorck_gram_vjp_reference,
    bjorck_reference,
    gram_pays,
)
from tests._tolerances import assert_close

SHAPES = {"wide": (6, 40), "tall": (40, 6), "square": (12, 12), "row": (1, 9), "batch": (3, 7, 30)}


def _unit(shape, seed):
    w = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return w / torch.linalg.matrix_norm(w, 2)[..., None, None] * 0.999


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("n_iters", [1, 2, 5, 6, 11, 15])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_equals_the_direct_iteration(shape, n_iters, order):
    w = _unit(shape, n_iters * 10 + order)
    torch.testing.assert_close(bjorck_gram(w, n_iters, order), bjorck_reference(w, n_iters, order),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(5, 23), (23, 5)], ids=["wide", "tall"])
def test_gradient_equals_the_direct_iteration(shape):
    w = _unit(shape, 1).requires_grad_(True)
    g = torch.randn(shape, dtype=torch.float64)
    (a,) = torch.autograd.grad(bjorck_gram(w, 7), w, g)
    (b,) = torch.autograd.grad(bjorck_reference(w, 7), w, g)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert torch.autograd.gradcheck(lambda x: bjorck_gram(x, 3, 2), (w.detach()[:3, :7].requires_grad_(True),))


@pytest.mark.parametrize("cond", [1e1, 1e3, 1e5, 1e7])
@pytest.mark.parametrize("n_iters", [5, 15])
def test_float32_ill_conditioned_keeps_the_bound(cond, n_iters):
    g = torch.Generator().manual_seed(int(cond))
    u, _, vh = torch.linalg.svd(torch.randn(64, 512, dtype=torch.float64, generator=g), full_matrices=False)
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), 64, dtype=torch.float64)
    w = u @ torch.diag(s) @ vh
    out = bjorck_gram(w.float(), n_iters).double()
    assert float(torch.linalg.svdvals(out).max()) <= 1 + 1e-5
    assert float((out - bjorck_reference(w, n_iters)).abs().max()) < 1e-5


def test_restart_and_choice():
    w = _unit((4, 20), 0)
    torch.testing.assert_close(bjorck_gram(w, 9, restart=2), bjorck_reference(w, 9), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="restart"):
        bjorck_gram(w, 3, restart=0)
    assert gram_pays((256, 1568)) and gram_pays((1568, 256)) and not gram_pays((128, 128))
    assert not gram_pays((8, 64))  # launch-bound below 16


# ----------------------------------------------------------------------------- Triton path


kg = pytest.importorskip("liptriton.kernels.bjorck_gram")


def _kernel_run(w32, g32, n_iters, order, restart=5):
    w = w32.clone().requires_grad_(True)
    y = bjorck_gram(w, n_iters, order, restart=restart)
    (dw,) = torch.autograd.grad(y, w, g32)
    return y.detach(), dw


def _expected(w64, g64, n_iters, order):
    w = w64.clone().requires_grad_(True)
    y = bjorck_reference(w, n_iters, order)
    (dw,) = torch.autograd.grad(y, w, g64)
    return y.detach(), dw


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(5, 23), (23, 5), (7, 7), (2, 3, 11)], ids=["wide", "tall", "square", "batch"])
def test_vjp_reference_equals_autograd(shape, order):
    w, g = _unit(shape, order), torch.randn(shape, dtype=torch.float64)
    wr = w.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(bjorck_reference(wr, 7, order), wr, g)
    assert_close(bjorck_gram_vjp_reference(w, g, 7, order, restart=3), expected)
    assert_close(bjorck_gram_reference(w, 7, order, restart=3), bjorck_reference(w, 7, order))


KERNEL_SHAPES = {"wide": (6, 40), "tall": (40, 6), "square": (12, 12), "row": (1, 9), "batch": (3, 5, 21)}


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", KERNEL_SHAPES.values(), ids=KERNEL_SHAPES.keys())
def test_kernel_shapes_and_orders(interpret, nan_empty, shape, order):
    w, g = _unit(shape, order), torch.randn(shape, dtype=torch.float64)
    y, dw = _kernel_run(w.float(), g.float(), 3, order, restart=2)
    y_ref, dw_ref = _expected(w, g, 3, order)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


@pytest.mark.parametrize("order", [1, 4])
@pytest.mark.parametrize("n_iters", [1, 2, 5, 6, 11, 15])
def test_kernel_iteration_counts(interpret, nan_empty, n_iters, order):
    w, g = _unit((8, 24), n_iters), torch.randn(8, 24, dtype=torch.float64)
    y, dw = _kernel_run(w.float(), g.float(), n_iters, order)
    y_ref, dw_ref = _expected(w, g, n_iters, order)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("shape", [(6, 20), (20, 6)], ids=["wide", "tall"])
def test_kernel_tiled_steps(interpret, nan_empty, monkeypatch, shape, order):
    # the S x S steps of large Grams run as tiled matmuls: forced here at a small size
    monkeypatch.setattr(kg, "STEPS_FUSED_MAX", 0)
    w, g = _unit(shape, 3), torch.randn(shape, dtype=torch.float64)
    y, dw = _kernel_run(w.float(), g.float(), 4, order, restart=3)
    y_ref, dw_ref = _expected(w, g, 4, order)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


def test_public_op_takes_the_kernel(interpret, monkeypatch):
    mod = sys.modules["liptriton.ops.bjorck_gram"]  # the module (liptriton.ops.bjorck_gram is the function)

    def _refuse(*args, **kwargs):
        raise AssertionError("the torch reference ran instead of the kernel")

    monkeypatch.setattr(mod, "bjorck_gram_reference", _refuse)
    monkeypatch.setattr(mod, "bjorck_gram_vjp_reference", _refuse)
    w, g = _unit((4, 20), 5), torch.randn(4, 20, dtype=torch.float64)
    y, dw = _kernel_run(w.float(), g.float(), 6, 1)
    y_ref, dw_ref = _expected(w, g, 6, 1)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


@pytest.mark.parametrize("cond", [1e3, 1e7])
def test_kernel_float32_ill_conditioned_keeps_the_bound(interpret, cond):
    # restart chunks of 5 keep P's float32 rounding small (see bjorck_gram's ``restart``)
    g = torch.Generator().manual_seed(int(cond))
    u, _, vh = torch.linalg.svd(torch.randn(32, 160, dtype=torch.float64, generator=g), full_matrices=False)
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), 32, dtype=torch.float64)
    w = u @ torch.diag(s) @ vh
    out = bjorck_gram(w.float(), 15).double()
    assert float(torch.linalg.svdvals(out).max()) <= 1 + 1e-5
    assert float((out - bjorck_reference(w, 15)).abs().max()) < 1e-5


def test_opcheck_bjorck_gram():
    # without the interpreter: the triton_op bodies take the torch path on CPU
    w = _unit((6, 20), 2).float().requires_grad_(True)
    torch.library.opcheck(torch.ops.liptriton.bjorck_gram.default, (w, 3, 2, 0.5, 2))
    torch.library.opcheck(torch.ops.liptriton.bjorck_gram_backward.default,
                          (torch.randn(6, 20), w.detach(), 3, 2, 0.5, 2))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(256, 1568), (1568, 256), (64, 2048), (4, 64, 576)],
                         ids=["256x1568", "1568x256", "64x2048", "4x64x576"])
def test_gpu_real_sizes(shape):
    w = _unit(shape, 0).cuda()
    g = torch.randn(shape, dtype=torch.float64, device="cuda")
    y, dw = _kernel_run(w.float(), g.float(), 5, 1)
    y_ref, dw_ref = _expected(w, g, 5, 1)
    assert_close(y, y_ref, dtype="gpu", iterative=True)
    assert_close(dw, dw_ref, dtype="gpu", iterative=True)
