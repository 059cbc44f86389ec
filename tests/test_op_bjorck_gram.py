"""Björck in Gram space against the direct iteration (float64 reference, values and gradients),
and its float32 accuracy on ill-conditioned weights (the bound must survive the rounding)."""

from __future__ import annotations

import pytest
import torch

from liptriton.ops import bjorck_gram, bjorck_reference, gram_pays

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
