"""The eager group-2 sort off the kernels (a custom autograd function that keeps the swap mask)
against the torch reference: values, gradients (autograd through the reference and its explicit
backward), ties, NaN, scale, dims, double backward, and when it is taken."""

from __future__ import annotations

import importlib

import pytest
import torch

gs_ops = importlib.import_module("liptriton.ops.group_sort")

CASES = [((7, 2), 1), ((4, 6, 3, 3), 1), ((5, 3, 6), -1), ((6, 7), 0), ((2, 4, 3, 2, 2), 1), ((0, 4), 1),
         ((3, 2, 1, 1), 1)]  # an empty batch, a 1x1 map


@pytest.mark.parametrize("scale", [1.0, 2.5])
@pytest.mark.parametrize("shape,dim", CASES, ids=[f"{s}-{d}" for s, d in CASES])
def test_equals_the_reference(shape, dim, scale):
    x = torch.randint(-2, 3, shape).double()  # many ties: swapped only when strictly out of order
    g = torch.randn(shape, dtype=torch.float64)
    a = x.clone().requires_grad_(True)
    y = gs_ops.group_sort(a, 2, dim, scale)
    assert y.grad_fn is not None and "GroupSort2" in type(y.grad_fn).__name__
    b = x.clone().requires_grad_(True)
    ref = gs_ops.group_sort_reference(b, 2, dim, scale)
    assert torch.equal(y, ref)
    (ga,) = torch.autograd.grad(y, a, g)
    (gb,) = torch.autograd.grad(ref, b, g)
    assert torch.equal(ga, gb)
    resolved = dim % len(shape)
    assert torch.equal(ga, gs_ops.group_sort_backward_reference(g, x, 2, resolved, scale))


def test_nan_and_non_contiguous_input():
    x = torch.randn(3, 8, 5).transpose(1, 2)  # (3, 5, 8), sorted along the non-contiguous dim 2
    x[0, 1, 2] = float("nan")
    a = x.clone().requires_grad_(True)
    y = gs_ops.group_sort(a, 2, 2)
    ref = gs_ops.group_sort_reference(x, 2, 2)
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.nan_to_num(), ref.nan_to_num())


def test_double_backward_is_the_permutation():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    (dx,) = torch.autograd.grad(gs_ops.group_sort(x, 2, 1, 3.0), x, g, create_graph=True)
    assert torch.autograd.gradcheck(lambda gg: torch.autograd.grad(gs_ops.group_sort(x, 2, 1, 3.0), x, gg,
                                                                   create_graph=True)[0], (g,))
    (back,) = torch.autograd.grad(dx.sum(), g)
    expected = gs_ops.group_sort_reference(torch.ones_like(x), 1, 1, 3.0)  # each entry's gradient, times 3
    torch.testing.assert_close(back, expected, rtol=0, atol=0)


def test_taken_only_where_it_pays():
    x = torch.randn(2, 4)
    assert gs_ops.group_sort(x, 2).grad_fn is None  # no gradient wanted: the reference, no saved mask
    y = gs_ops.group_sort(x.requires_grad_(True), 4)  # groups of 4: the sort-based reference
    assert "GroupSort2" not in type(y.grad_fn).__name__
    with torch.no_grad():
        assert gs_ops.group_sort(x, 2).grad_fn is None
