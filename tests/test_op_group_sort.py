"""GroupSort / FullSort / MaxMin ops: Triton kernels (interpreter on CPU) against the torch references."""

from __future__ import annotations

import importlib

import pytest
import torch

from liptriton.ops._dispatch import HAS_TRITON
from tests._tolerances import assert_close

# The op modules (liptriton.ops re-exports functions of the same names).
gs_ops = importlib.import_module("liptriton.ops.group_sort")
mm_ops = importlib.import_module("liptriton.ops.max_min")

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")

# (shape, group_size, dim): ranks 2-5, groups 2 / 3 / 4 / full, odd channel counts, negative dims.
GROUP_CASES = [
    ((7, 2), 2, 1),
    ((3, 8), 4, 1),
    ((1, 127), None, 1),
    ((2, 6, 5), 3, 1),
    ((2, 9, 3, 4), None, 1),
    ((2, 4, 3, 2, 2), 2, 1),
    ((2, 12, 3, 1, 2), 4, 1),
    ((5, 3, 6), 2, -1),
    ((6, 7), 3, 0),
    ((3, 1, 5), None, 1),
]
MAX_MIN_CASES = [((5,), None), ((3, 7), None), ((2, 3, 4), 2), ((2, 3, 4, 5), -1), ((2, 3, 2, 2, 3), 1),
                 ((4, 3), 0)]


def _ids(cases):
    return ["x".join(map(str, c[0])) + "-" + "-".join(map(str, c[1:])) for c in cases]


def _counting(real, name, calls):
    def counted(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    return counted


@pytest.fixture
def spy(monkeypatch):
    """Record the launches of the kernels' launchers (proves the Triton path ran)."""
    from liptriton.kernels import group_sort as kg
    from liptriton.kernels import max_min as km

    calls: list[str] = []
    for module, names in ((kg, ("group_sort_forward", "group_sort_backward")),
                          (km, ("max_min_forward", "max_min_backward"))):
        for name in names:
            monkeypatch.setattr(module, name, _counting(getattr(module, name), name, calls))
    return calls


def _fwd_bwd(fn, x, seed_grad=True):
    x = x.detach().requires_grad_(True)
    y = fn(x)
    g = torch.randn_like(y) if seed_grad else None
    (dx,) = torch.autograd.grad(y, x, g if seed_grad else torch.ones_like(y))
    return y, dx, g


@pytest.mark.interpreter
@pytest.mark.parametrize("shape,group_size,dim", GROUP_CASES, ids=_ids(GROUP_CASES))
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_group_sort_kernel_matches_reference(shape, group_size, dim, scale, interpret, nan_empty, spy):
    x = torch.randn(shape)
    y, dx, g = _fwd_bwd(lambda t: gs_ops.group_sort(t, group_size, dim, scale), x)
    xr = x.clone().requires_grad_(True)
    yr = gs_ops.group_sort_reference(xr, group_size, dim, scale)
    (dxr,) = torch.autograd.grad(yr, xr, g)
    assert_close(y, yr)
    assert_close(dx, dxr)
    single = shape[dim] == 1  # one channel: a plain scaling, no kernel
    assert spy == ([] if single else ["group_sort_forward", "group_sort_backward"])


@pytest.mark.interpreter
def test_group_sort_kernel_non_contiguous_and_expanded_grad(interpret, nan_empty, spy):
    x = torch.randn(3, 5, 8).transpose(1, 2)  # (3, 8, 5), channels dim 1 not contiguous
    assert not x.is_contiguous()
    for group_size in (2, 4):
        xk = x.clone().requires_grad_(True)
        gs_ops.group_sort(xk, group_size, 1, 2.0).sum().backward()  # the grad is a stride-0 expand
        xr = x.clone().requires_grad_(True)
        gs_ops.group_sort_reference(xr, group_size, 1, 2.0).sum().backward()
        expected = gs_ops.group_sort_reference(x, group_size, 1, 2.0)
        assert_close(gs_ops.group_sort(x, group_size, 1, 2.0), expected)
        assert_close(xk.grad, xr.grad)
    assert spy.count("group_sort_backward") == 2


@pytest.mark.interpreter
@pytest.mark.parametrize("group_size", [2, 3, None])
def test_group_sort_kernel_ties_are_stable(group_size, interpret, nan_empty):
    # Small integers (with -0.0 among them): many ties; the gradient must follow a stable order.
    x = torch.randint(-2, 3, (4, 6, 3)).float()
    x[x == 0] = -0.0
    x[0, :, 0] = 0.0
    y, dx, g = _fwd_bwd(lambda t: gs_ops.group_sort(t, group_size, 1), x)
    xr = x.clone().requires_grad_(True)
    (dxr,) = torch.autograd.grad(gs_ops.group_sort_reference(xr, group_size, 1), xr, g)
    assert_close(y, gs_ops.group_sort_reference(x, group_size, 1))
    assert torch.equal(dx, dxr)


@pytest.mark.interpreter
@pytest.mark.parametrize("group_size", [2, 4, None])
def test_kernels_float16(group_size, interpret, nan_empty, spy):
    # float16 round-trips exactly through the float32 sort keys; the scale is applied in float32.
    x = torch.randn(3, 8, 5).half()
    y, dx, g = _fwd_bwd(lambda t: gs_ops.group_sort(t, group_size, 1, 0.5), x)
    xr = x.clone().requires_grad_(True)
    (dxr,) = torch.autograd.grad(gs_ops.group_sort_reference(xr, group_size, 1, 0.5), xr, g)
    assert torch.equal(y, gs_ops.group_sort_reference(x, group_size, 1, 0.5)) and torch.equal(dx, dxr)
    y, dx, g = _fwd_bwd(lambda t: mm_ops.max_min(t, 1, 0.5), x)
    xr = x.clone().requires_grad_(True)
    (dxr,) = torch.autograd.grad(mm_ops.max_min_reference(xr, 1, 0.5), xr, g)
    assert torch.equal(y, mm_ops.max_min_reference(x, 1, 0.5)) and torch.equal(dx, dxr)
    assert spy == ["group_sort_forward", "group_sort_backward", "max_min_forward", "max_min_backward"]


@pytest.mark.interpreter
def test_kernels_int64_index_path(interpret, nan_empty, monkeypatch):
    from liptriton.kernels import group_sort as kg
    from liptriton.kernels import max_min as km

    monkeypatch.setattr(kg, "INT32_LIMIT", 0)
    monkeypatch.setattr(km, "INT32_LIMIT", 0)
    x, g = torch.randn(3, 6, 4), torch.randn(3, 6, 4)
    for size in (2, 3):
        assert_close(kg.group_sort_forward(x, size, 1, 0.5), gs_ops.group_sort_reference(x, size, 1, 0.5))
        assert_close(kg.group_sort_backward(g, x, size, 1, 0.5),
                     gs_ops.group_sort_backward_reference(g, x, size, 1, 0.5))
    assert_close(km.max_min_forward(x, 2, 0.5), mm_ops.max_min_reference(x, 2, 0.5))
    g2 = torch.randn(3, 6, 8)
    assert_close(km.max_min_backward(g2, x, 2, 0.5), mm_ops.max_min_backward_reference(g2, x, 2, 0.5))


@pytest.mark.interpreter
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_group_sort_launcher_float64_and_group_one(group_size, interpret, nan_empty):
    from liptriton.kernels.group_sort import group_sort_backward, group_sort_forward, sort_supported

    x = torch.randn(3, 8, 2, dtype=torch.float64)
    if not sort_supported(x, group_size):  # float64 sorts of > 2 take the reference in the op
        with pytest.raises(TypeError, match="group_sort_forward"):
            group_sort_forward(x, group_size, 1, 0.3)
        expected = gs_ops.group_sort_reference(x, group_size, 1, 0.3)
        assert_close(gs_ops.group_sort(x, group_size, 1, 0.3), expected)
        return
    g = torch.randn_like(x)
    expected = gs_ops.group_sort_reference(x, group_size, 1, 0.3)
    assert_close(group_sort_forward(x, group_size, 1, 0.3), expected)
    assert_close(group_sort_backward(g, x, group_size, 1, 0.3),
                 gs_ops.group_sort_backward_reference(g, x, group_size, 1, 0.3))


@pytest.mark.interpreter
@pytest.mark.parametrize("shape,dim", MAX_MIN_CASES, ids=_ids(MAX_MIN_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_min_kernel_matches_reference(shape, dim, dtype, interpret, nan_empty, spy):
    x = torch.randn(shape, dtype=dtype)
    x.view(-1)[0] = 0.0  # relu'(0) = 0 on both halves
    y, dx, g = _fwd_bwd(lambda t: mm_ops.max_min(t, dim, 1.3), x)
    xr = x.clone().requires_grad_(True)
    (dxr,) = torch.autograd.grad(mm_ops.max_min_reference(xr, dim, 1.3), xr, g)
    assert_close(y, mm_ops.max_min_reference(x, dim, 1.3))
    assert_close(dx, dxr)
    assert spy == ["max_min_forward", "max_min_backward"]


@pytest.mark.interpreter
def test_max_min_kernel_non_contiguous(interpret, nan_empty):
    x = torch.randn(4, 6, 3).permute(2, 1, 0)
    xk, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    mm_ops.max_min(xk, 1).sum().backward()
    mm_ops.max_min_reference(xr, 1).sum().backward()
    assert_close(mm_ops.max_min(x, 1), mm_ops.max_min_reference(x, 1))
    assert_close(xk.grad, xr.grad)


@pytest.mark.interpreter
@pytest.mark.parametrize("op", ["group_sort2", "group_sort4", "max_min"])
def test_double_backward_and_torch_func(op, interpret):
    if op == "max_min":
        fn, ref = (lambda t: mm_ops.max_min(t, 1, 1.5)), (lambda t: mm_ops.max_min_reference(t, 1, 1.5))
    else:
        size = int(op[-1])
        fn = lambda t: gs_ops.group_sort(t, size, 1, 1.5)
        ref = lambda t: gs_ops.group_sort_reference(t, size, 1, 1.5)
    x = torch.randn(2, 4, 3)
    w = torch.randn_like(ref(x))
    results = []
    for f in (fn, ref):  # the gradient of <grad f(x) . v, u> w.r.t. x, through the backward's backward
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((f(xx) * w).square().sum(), xx, create_graph=True)
        (gg,) = torch.autograd.grad(g.sin().sum(), xx)
        results.append(gg)
    assert_close(results[0], results[1])
    assert_close(torch.func.jacrev(fn)(x), torch.func.jacrev(ref)(x))


@pytest.mark.parametrize("group_size", [2, 3, None])
def test_group_sort_reference_gradcheck(group_size):
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: gs_ops.group_sort_reference(t, group_size, 1, 0.5), (x,))
    g = torch.randn_like(x)
    (expected,) = torch.autograd.grad(gs_ops.group_sort_reference(x, group_size, 1, 0.5), x, g)
    resolved = group_size or 6
    assert_close(gs_ops.group_sort_backward_reference(g, x.detach(), resolved, 1, 0.5), expected)


def test_max_min_reference_gradcheck():
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: mm_ops.max_min_reference(t, 2, 2.0), (x,))
    g = torch.randn(2, 3, 8, dtype=torch.float64)
    (expected,) = torch.autograd.grad(mm_ops.max_min_reference(x, 2, 2.0), x, g)
    assert_close(mm_ops.max_min_backward_reference(g, x.detach(), 2, 2.0), expected)


@pytest.mark.parametrize("group_size", [2, 4])
def test_opcheck_group_sort(group_size):
    x = torch.randn(3, 8, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.liptriton.group_sort.default, (x, group_size, 1, 0.5))
    g = torch.randn(3, 8, 2)
    backward = torch.ops.liptriton.group_sort_backward.default
    torch.library.opcheck(backward, (g, x.detach(), group_size, 1, 0.5))


def test_opcheck_max_min():
    x = torch.randn(3, 4, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.liptriton.max_min.default, (x, 1, 0.5))
    g = torch.randn(3, 8, 2)
    torch.library.opcheck(torch.ops.liptriton.max_min_backward.default, (g, x.detach(), 1, 0.5))


def test_op_bad_inputs():
    with pytest.raises(ValueError, match=r"group_sort: the size 6 of dim 1 .* multiple of group_size=4"):
        gs_ops.group_sort(torch.randn(2, 6), 4)
    with pytest.raises(ValueError, match=r"group_sort: dim must be in \[-2, 2\)"):
        gs_ops.group_sort(torch.randn(2, 6), 2, dim=2)
    with pytest.raises(TypeError, match="group_sort: input must be a floating-point tensor"):
        gs_ops.group_sort(torch.ones(2, 6, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="max_min: dim must be in"):
        mm_ops.max_min(torch.randn(2, 6), dim=-3)


GPU_GROUP_CASES = [((256, 512), 2), ((64, 256, 32, 32), 2), ((64, 256, 32, 32), 4), ((512, 1024), None),
                   ((32, 96, 16, 16), 3), ((8, 64, 8, 8, 8), 8), ((4, 8192), None)]


@pytest.mark.gpu
@pytest.mark.parametrize("shape,group_size", GPU_GROUP_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_group_sort_gpu(shape, group_size, dtype):
    x = torch.randn(shape, device="cuda", dtype=dtype)
    y, dx, g = _fwd_bwd(lambda t: gs_ops.group_sort(t, group_size, 1, 0.5), x)
    xr = x.clone().requires_grad_(True)
    (dxr,) = torch.autograd.grad(gs_ops.group_sort_reference(xr, group_size, 1, 0.5), xr, g)
    assert_close(y, gs_ops.group_sort_reference(x, group_size, 1, 0.5))
    assert_close(dx, dxr)


@pytest.mark.gpu
@pytest.mark.parametrize("shape,dim", [((256, 512), None), ((64, 128, 32, 32), 1), ((64, 128, 32, 32), -1)])
def test_max_min_gpu(shape, dim):
    x = torch.randn(shape, device="cuda")
    y, dx, g = _fwd_bwd(lambda t: mm_ops.max_min(t, dim, 2.0), x)
    xr = x.clone().requires_grad_(True)
    (dxr,) = torch.autograd.grad(mm_ops.max_min_reference(xr, dim, 2.0), xr, g)
    assert_close(y, mm_ops.max_min_reference(x, dim, 2.0))
    assert_close(dx, dxr)
