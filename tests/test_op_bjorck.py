"""Björck op: reference math, fused / tiled Triton kernels (interpreter on CPU), opcheck."""

from __future__ import annotations

import sys

import pytest
import torch

import liptriton.ops as ops
from liptriton.ops import bjorck_reference, bjorck_vjp_reference
from tests._tolerances import assert_close

kb = pytest.importorskip("liptriton.kernels.bjorck")

SHAPES = [(1, 1), (1, 7), (7, 1), (7, 7), (7, 127), (127, 7), (32, 288), (3, 5, 9)]
ORDERS = [1, 2, 3, 4]
N_ITERS = 3  # the interpreter is slow: few steps in kernel tests


def _ids(shape) -> str:
    return "x".join(map(str, shape))


def _normalized(shape, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Random weight scaled to spectral norm 0.9 per matrix (Björck needs ||W||_2 <= 1)."""
    w = torch.randn(*shape, dtype=torch.float64, device=device)
    w = w / torch.linalg.matrix_norm(w, 2).unsqueeze(-1).unsqueeze(-1) * 0.9
    return w.to(dtype)


def _reference_and_grad(w: torch.Tensor, g: torch.Tensor, n_iters: int, order: int):
    """float64 reference output and gradient (autograd through bjorck_reference)."""
    w64 = w.double().requires_grad_()
    y = bjorck_reference(w64, n_iters, order)
    (dw,) = torch.autograd.grad(y, w64, g.double())
    return y.detach(), dw


def _run(w: torch.Tensor, g: torch.Tensor, n_iters: int, order: int, fn=ops.bjorck):
    w = w.clone().requires_grad_()
    y = fn(w, n_iters, order)
    (dw,) = torch.autograd.grad(y, w, g)
    return y.detach(), dw


# ----------------------------------------------------------------------------- reference math


@pytest.mark.parametrize("shape", [(4, 9), (9, 4), (5, 5), (2, 3, 6)], ids=_ids)
@pytest.mark.parametrize("order", ORDERS)
def test_vjp_formula_matches_autograd_float64(shape, order):
    w, g = _normalized(shape, torch.float64), torch.randn(*shape, dtype=torch.float64)
    _, expected = _reference_and_grad(w, g, 5, order)
    assert_close(bjorck_vjp_reference(w, g, 5, order), expected)


def test_gradcheck_reference_float64():
    w = _normalized((3, 5), torch.float64).requires_grad_()
    for order in (1, 3):
        assert torch.autograd.gradcheck(lambda x: bjorck_reference(x, 4, order), (w,))


# ----------------------------------------------------------------------------- fused kernels


# every shape with orders 1 and 4, the middle orders on a few shapes (the interpreter is slow)
FUSED_CASES = [(s, o) for o in (1, 4) for s in SHAPES] + [(s, o) for o in (2, 3) for s in SHAPES[3::2]]


@pytest.mark.parametrize("shape,order", FUSED_CASES, ids=[f"{_ids(s)}-order{o}" for s, o in FUSED_CASES])
def test_fused_forward_backward(interpret, nan_empty, shape, order):
    w, g = _normalized(shape), torch.randn(*shape)
    y, dw = _run(w, g, N_ITERS, order)
    y_ref, dw_ref = _reference_and_grad(w, g, N_ITERS, order)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


def test_public_op_takes_the_kernels(interpret, monkeypatch):
    module = sys.modules["liptriton.ops.bjorck"]
    calls = []
    for name in ("_kernel_forward", "_kernel_backward"):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    _run(_normalized((4, 6)), torch.randn(4, 6), 2, 1)
    assert calls == ["_kernel_forward", "_kernel_backward"]


def test_fused_non_contiguous_and_expanded_grad(interpret, nan_empty):
    w = _normalized((9, 6)).mT  # non-contiguous (6, 9)
    g = torch.randn(1, 9).expand(6, 9)  # stride-0 gradient
    y, dw = _run(w, g, N_ITERS, 1)
    y_ref, dw_ref = _reference_and_grad(w, g, N_ITERS, 1)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


def test_one_iteration(interpret, nan_empty):
    w, g = _normalized((5, 12)), torch.randn(5, 12)
    y, dw = _run(w, g, 1, 2)
    y_ref, dw_ref = _reference_and_grad(w, g, 1, 2)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


# ----------------------------------------------------------------------------- tiled kernels


@pytest.mark.parametrize("shape", [(7, 7), (127, 7), (3, 5, 9)], ids=_ids)
@pytest.mark.parametrize("order", [1, 3])
def test_tiled_forced(interpret, nan_empty, monkeypatch, shape, order):
    monkeypatch.setattr(kb, "FUSED_MAX_SMALL", 0)  # every size takes the tiled path
    w, g = _normalized(shape), torch.randn(*shape)
    y, dw = _run(w, g, 3, order)
    y_ref, dw_ref = _reference_and_grad(w, g, 3, order)
    assert_close(y, y_ref, iterative=True)
    assert_close(dw, dw_ref, iterative=True)


def test_tiled_launcher_threshold_argument(interpret, nan_empty):
    w = _normalized((1, 20, 12))
    coeffs = ops.bjorck_coefficients(3)
    tiled = kb.bjorck_forward(w, 3, coeffs, fused_max_small=0)
    fused = kb.bjorck_forward(w, 3, coeffs)
    assert_close(tiled, fused, iterative=True)
    assert_close(tiled, bjorck_reference(w.double(), 3, 3), iterative=True)


# ----------------------------------------------------------------------------- properties


def test_singular_values_bounded_and_converged(interpret):
    w = _normalized((2, 12, 40))
    q = ops.bjorck(w, n_iters=12, order=2)
    s = torch.linalg.svdvals(q.double())
    assert s.max() <= 1 + 1e-5 and s.min() >= 0.99


# ----------------------------------------------------------------------------- opcheck, errors


def test_opcheck_bjorck():
    # without the interpreter: the triton_op body takes the torch path on CPU
    w = _normalized((6, 10)).requires_grad_()
    torch.library.opcheck(torch.ops.liptriton.bjorck.default, (w, 2, 2, 0.5))
    torch.library.opcheck(torch.ops.liptriton.bjorck_backward.default,
                          (torch.randn(6, 10), w.detach(), 2, 2, 0.5))


@pytest.mark.parametrize("fn", [ops.bjorck, ops.bjorck_gram], ids=["bjorck", "bjorck_gram"])
def test_bad_input(fn):
    with pytest.raises(ValueError, match="n_iters"):
        fn(torch.randn(3, 4), n_iters=0)
    with pytest.raises(TypeError, match="floating"):
        fn(torch.ones(3, 4, dtype=torch.int64), n_iters=3)
    with pytest.raises(ValueError, match="shape"):
        fn(torch.randn(5), n_iters=3)
    with pytest.raises(ValueError, match="order"):
        fn(torch.randn(3, 4), n_iters=3, order=5)
    with pytest.raises(ValueError, match="beta"):
        fn(torch.randn(3, 4), n_iters=3, beta=0.7)


# ----------------------------------------------------------------------------- GPU, real sizes


@pytest.mark.gpu
@pytest.mark.parametrize("shape,n_iters", [((64, 576), 15), ((576, 64), 15), ((8, 64, 576), 15),
                                           ((512, 512), 10), ((4096, 4096), 5)],
                         ids=["64x576", "576x64", "8x64x576", "512x512", "4096x4096-tiled"])
def test_gpu_real_sizes(shape, n_iters):
    w, g = _normalized(shape, device="cuda"), torch.randn(*shape, device="cuda")
    y, dw = _run(w, g, n_iters, 1)
    y_ref, dw_ref = _reference_and_grad(w, g, n_iters, 1)
    assert_close(y, y_ref, dtype="gpu", iterative=True)
    assert_close(dw, dw_ref, dtype="gpu", iterative=True)
