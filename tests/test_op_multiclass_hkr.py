"""The fused hinge / KR / HKR op: Triton kernel (interpreter on CPU) vs its torch reference."""

from __future__ import annotations

import pytest
import torch
from _tolerances import assert_close

import liptriton
import liptriton.ops as ops
from liptriton.ops._dispatch import HAS_TRITON

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")

SIZES = [(1, 2), (7, 10), (127, 100)]
# (alpha, pos_weight, kr_from_target): KR only, hinge only (multiclass weight), HKR, multi-GPU labels
VARIANTS = [(0.0, 1.0, False), (1.0, None, False), (0.7, None, False), (0.4, 1.0, True)]


def _data(n, c, device, kr_from_target):
    x = torch.randn(n, c, device=device)
    idx = torch.randint(0, c, (n,), device=device)
    target = torch.nn.functional.one_hot(idx, c).float()
    if kr_from_target:
        target = target * torch.rand(n, c, device=device) * 3 - (1 - target) * torch.rand(n, c, device=device)
    kr_pos, kr_neg = torch.rand(c, device=device) + 1, -torch.rand(c, device=device) - 1
    return x, target, kr_pos, kr_neg


def _run(fn, x, *args):
    x = x.clone().requires_grad_(True)
    loss = fn(x, *args)
    weights = torch.arange(1, x.shape[0] + 1, dtype=x.dtype, device=x.device)  # non-uniform grad_output
    (grad,) = torch.autograd.grad((loss * weights).sum(), x)
    return loss, grad


@pytest.mark.interpreter
@pytest.mark.parametrize("variant", VARIANTS, ids=["kr", "hinge", "hkr", "multi_gpu"])
@pytest.mark.parametrize("n,c", SIZES, ids=[f"{n}x{c}" for n, c in SIZES])
def test_kernel_matches_reference(n, c, variant, interpret, nan_empty, device, monkeypatch):
    import liptriton.kernels.multiclass_hkr as kernels

    launches = []
    real = kernels.multiclass_hkr_forward
    monkeypatch.setattr(kernels, "multiclass_hkr_forward", lambda *a: launches.append(1) or real(*a))
    alpha, pos_weight, kr_from_target = variant
    pos_weight = float(c - 1) if pos_weight is None else pos_weight
    x, target, kr_pos, kr_neg = _data(n, c, device, kr_from_target)
    args = (target, kr_pos, kr_neg, alpha, 0.8, pos_weight, kr_from_target)
    loss, grad = _run(ops.multiclass_hkr, x, *args)
    ref_loss, ref_grad = _run(ops.multiclass_hkr_reference, x, *args)
    assert launches, "the Triton kernel did not run"
    assert_close(loss, ref_loss)
    assert_close(grad, ref_grad)


@pytest.mark.interpreter
def test_kernel_non_contiguous_and_bool_target(interpret, nan_empty, device):
    x = torch.randn(20, 14, device=device)[:, ::2]  # stride 2 on the classes
    target = torch.eye(7, dtype=torch.bool, device=device).repeat(3, 1)[:20]
    kr_pos, kr_neg = torch.ones(7, device=device), -torch.ones(7, device=device)
    args = (target, kr_pos, kr_neg, 0.5, 1.0, 6.0, False)
    loss, grad = _run(ops.multiclass_hkr, x, *args)
    ref_loss, ref_grad = _run(ops.multiclass_hkr_reference, x, *args)
    assert_close(loss, ref_loss)
    assert_close(grad, ref_grad)


@pytest.mark.interpreter
def test_kernel_expanded_grad_output(interpret, nan_empty, device):
    # loss.mean() sends an expanded (stride-0) grad_output to the backward.
    x, target, kr_pos, kr_neg = _data(9, 5, device, False)
    xg = x.clone().requires_grad_(True)
    ops.multiclass_hkr(xg, target, kr_pos, kr_neg, 0.6, 1.0, 4.0).mean().backward()
    xr = x.clone().requires_grad_(True)
    ops.multiclass_hkr_reference(xr, target, kr_pos, kr_neg, 0.6, 1.0, 4.0).mean().backward()
    assert_close(xg.grad, xr.grad)


def test_reference_gradcheck_float64():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    target = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0]), 4).double()
    kr_pos, kr_neg = torch.rand(4, dtype=torch.float64) + 1, -torch.rand(4, dtype=torch.float64) - 1
    assert torch.autograd.gradcheck(
        lambda x: ops.multiclass_hkr_reference(x, target, kr_pos, kr_neg, 0.6, 0.7, 3.0), (x,))


def test_opcheck_torch_path():
    # The triton_op body takes its torch path on CPU without the interpreter switch.
    x = torch.randn(6, 3, requires_grad=True)
    target = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    args = (x, target, torch.ones(3), -torch.ones(3), 0.5, 1.0, 2.0, False, True)
    torch.library.opcheck(torch.ops.liptriton.multiclass_hkr.default, args)


def test_bad_arguments():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="multiclass_hkr: expected input and target"):
        ops.multiclass_hkr(x, torch.zeros(4, 2), torch.ones(3), torch.ones(3), 0.5)
    with pytest.raises(ValueError, match="multiclass_hkr: alpha"):
        ops.multiclass_hkr(x, torch.zeros(4, 3), torch.ones(3), torch.ones(3), 1.5)


@pytest.mark.gpu
@pytest.mark.parametrize("n,c", [(4096, 10), (1024, 1000), (65536, 2)])
def test_kernel_matches_reference_gpu(n, c):
    x, target, kr_pos, kr_neg = _data(n, c, torch.device("cuda"), False)
    args = (target, kr_pos, kr_neg, 0.9, 1.0, float(c - 1), False)
    loss, grad = _run(ops.multiclass_hkr, x, *args)
    ref_loss, ref_grad = _run(ops.multiclass_hkr_reference, x, *args)
    assert_close(loss, ref_loss, dtype="gpu")
    assert_close(grad, ref_grad, dtype="gpu")


@pytest.mark.interpreter
def test_losses_through_the_kernel_equal_torch_path(interpret, nan_empty, device):
    import liptriton.functional as LF

    x = torch.randn(13, 6, device=device)
    y = torch.arange(13, device=device) % 6
    fns = [lambda x: LF.kr_loss(x, y), lambda x: LF.hinge_multiclass_loss(x, y, 0.7),
           lambda x: LF.hkr_multiclass_loss(x, y, 0.9, 0.7, reduction="mean"),
           lambda x: LF.hkr_loss(x[:, :1], (y[:, None] % 2).float(), 0.5, reduction="sum")]
    for fn in fns:
        out, grad = _run(lambda x: fn(x).reshape(-1), x)
        with liptriton.config.force_torch():
            ref, ref_grad = _run(lambda x: fn(x).reshape(-1), x)
        assert_close(out, ref)
        assert_close(grad, ref_grad)
