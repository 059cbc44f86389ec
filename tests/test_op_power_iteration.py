"""Power-iteration op: Triton kernels (fused and tiled) against the torch reference."""

from __future__ import annotations

import importlib

import pytest
import torch

from liptriton.ops import power_iteration, power_iteration_reference, spectral_sigma
from tests._tolerances import assert_close, tol

pytestmark = pytest.mark.interpreter

SHAPES = {
    "1x1": (1, 1),
    "7x7": (7, 7),
    "127x127": (127, 127),
    "wide7x127": (7, 127),
    "tall127x7": (127, 7),
    "batch3x7x5": (3, 7, 5),
    "batch2x127x7": (2, 127, 7),
}


def _inputs(shape, device="cpu", dtype=torch.float32):
    w = torch.randn(*shape, device=device, dtype=dtype)
    u = torch.randn(shape[:-1], device=device, dtype=dtype)
    v = torch.randn(shape[:-2] + shape[-1:], device=device, dtype=dtype)
    return w, u, v


def _launch(w, u, n_iters, variant):
    from liptriton.kernels.power_iteration import power_iteration_forward

    m, n = w.shape[-2:]
    u_new, v_new = power_iteration_forward(w.reshape(-1, m, n), u.reshape(-1, m), n_iters, 1e-12,
                                           variant=variant)
    return u_new.reshape(w.shape[:-1]), v_new.reshape(w.shape[:-2] + w.shape[-1:])


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_op_matches_reference(shape, interpret, nan_empty):
    w, u, v = _inputs(shape)
    u_ref, v_ref = power_iteration_reference(w, u, v, 5)
    u_new, v_new = power_iteration(w, u, v, 5)
    assert_close(u_new, u_ref, iterative=True)
    assert_close(v_new, v_ref, iterative=True)


def test_public_op_runs_the_kernel(interpret, monkeypatch):
    mod = importlib.import_module("liptriton.ops.power_iteration")  # the package re-exports the function
    calls = []
    real = mod.power_iteration_forward
    monkeypatch.setattr(mod, "power_iteration_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    power_iteration(*_inputs((4, 3)), 2)
    assert calls, "the interpreter path did not reach the Triton launcher"


@pytest.mark.parametrize("variant", ["fused", "tiled"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 127), (127, 7), (3, 7, 5)],
                         ids=["1x1", "7x127", "127x7", "3x7x5"])
def test_variants_match_reference(shape, variant, interpret, nan_empty):
    w, u, v = _inputs(shape)
    u_ref, v_ref = power_iteration_reference(w, u, v, 3)
    u_new, v_new = _launch(w, u, 3, variant)
    assert_close(u_new, u_ref, iterative=True)
    assert_close(v_new, v_ref, iterative=True)


def test_non_contiguous_and_half_input(interpret, nan_empty):
    w = torch.randn(9, 6).mT  # (6, 9), transposed strides
    u, v = torch.randn(6), torch.randn(9)
    u_ref, v_ref = power_iteration_reference(w, u, v, 4)
    u_new, v_new = power_iteration(w, u, v, 4)
    assert_close(u_new, u_ref, iterative=True)
    assert_close(v_new, v_ref, iterative=True)
    wh, uh, vh = w.half(), u.half(), v.half()
    u_new, v_new = power_iteration(wh, uh, vh, 4)
    assert u_new.dtype == torch.float16 and v_new.dtype == torch.float16
    u_ref, v_ref = power_iteration_reference(wh, uh, vh, 4)
    assert_close(u_new, u_ref)
    assert_close(v_new, v_ref)


def test_requires_grad_inputs_pass(interpret):
    w = torch.randn(5, 4, requires_grad=True)
    u, v = power_iteration(w, torch.randn(5), torch.randn(4), 2)
    assert not u.requires_grad and not v.requires_grad
    sigma = spectral_sigma(w, u, v)
    sigma.backward()  # gradient flows through w only
    assert w.grad is not None and torch.isfinite(w.grad).all()


@pytest.mark.parametrize("variant", ["fused", "tiled"])
@pytest.mark.parametrize("shape", [(7, 5), (20, 12), (5, 20)], ids=["7x5", "20x12", "5x20"])
def test_sigma_converges_to_spectral_norm(shape, variant, interpret):
    # Planted spectrum 3 * 0.7^k: with this gap 40 steps leave an error far below float32 rounding.
    m, n = shape
    q_left = torch.linalg.qr(torch.randn(m, min(m, n), dtype=torch.float64))[0]
    q_right = torch.linalg.qr(torch.randn(n, min(m, n), dtype=torch.float64))[0]
    w = ((q_left * (3.0 * 0.7 ** torch.arange(min(m, n), dtype=torch.float64))) @ q_right.mT).float()
    u_new, v_new = _launch(w, torch.randn(m), 40, variant)
    sigma = spectral_sigma(w, u_new, v_new)
    expected = torch.linalg.matrix_norm(w.double(), 2).float()
    torch.testing.assert_close(sigma, expected, **tol(torch.float32, iterative=True))
    assert_close(u_new.norm(), torch.tensor(1.0))
    assert_close(v_new.norm(), torch.tensor(1.0))


def test_opcheck():
    w, u, v = _inputs((6, 4))
    torch.library.opcheck(torch.ops.liptriton.power_iteration.default, (w, u, v, 3, 1e-12))
    w, u, v = _inputs((2, 3, 5))
    torch.library.opcheck(torch.ops.liptriton.power_iteration.default, (w, u, v, 1, 1e-12))


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.ones(3, 3, dtype=torch.int64), torch.ones(3), torch.ones(3), 1), TypeError,
         "w must be a floating"),
        ((torch.ones(3), torch.ones(3), torch.ones(3), 1), ValueError, r"w must have shape \(\.\.\., m, n\)"),
        ((torch.ones(3, 4), torch.ones(4), torch.ones(4), 1), ValueError, "expected u of shape"),
        ((torch.ones(3, 4), torch.ones(3), torch.ones(4), 0), ValueError, "n_iters must be an integer >= 1"),
        ((torch.ones(3, 4), torch.ones(3), torch.ones(4), 1.5), ValueError, "n_iters"),
    ],
    ids=["int-w", "1d-w", "bad-u", "zero-iters", "float-iters"],
)
def test_bad_inputs(args, error, match, interpret):
    with pytest.raises(error, match=f"power_iteration: {match}"):
        power_iteration(*args)


def test_launcher_rejects_bad_variant(interpret):
    with pytest.raises(ValueError, match="power_iteration_forward: variant"):
        _launch(torch.randn(3, 4), torch.randn(3), 1, "bogus")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["fused", "tiled"])
def test_gpu_large(variant):
    w, u, v = _inputs((4096, 4096), device="cuda")
    u_ref, v_ref = power_iteration_reference(w, u, v, 10)
    u_new, v_new = _launch(w, u, 10, variant)
    assert_close(u_new, u_ref, dtype="gpu", iterative=True)
    assert_close(v_new, v_ref, dtype="gpu", iterative=True)
    # Planted spectrum 2 * 0.9^k: a clear gap, so 300 steps converge far below the tolerance.
    q_left = torch.linalg.qr(torch.randn(1024, 512, device="cuda", dtype=torch.float64))[0]
    q_right = torch.linalg.qr(torch.randn(512, 512, device="cuda", dtype=torch.float64))[0]
    spectrum = 2.0 * 0.9 ** torch.arange(512, device="cuda", dtype=torch.float64)
    w = ((q_left * spectrum) @ q_right.mT).float()
    u_new, v_new = _launch(w, torch.randn(1024, device="cuda"), 300, variant)
    torch.testing.assert_close(spectral_sigma(w, u_new, v_new), torch.tensor(2.0, device="cuda"), **tol("gpu"))


@pytest.mark.gpu
def test_gpu_batched():
    w, u, v = _inputs((64, 256, 384), device="cuda")
    u_ref, v_ref = power_iteration_reference(w, u, v, 10)
    u_new, v_new = power_iteration(w, u, v, 10)
    assert_close(u_new, u_ref, dtype="gpu", iterative=True)
    assert_close(v_new, v_ref, dtype="gpu", iterative=True)
