"""Helpers of the deel-torchlip parity tests: run the same call on both libraries, compare values
and gradients."""

from __future__ import annotations

import torch

from tests._tolerances import assert_close


def _clone(a):
    if isinstance(a, torch.Tensor):
        return a.detach().clone().requires_grad_(a.requires_grad)
    return a


def run(fn, args, kwargs=None, cotangent_seed: int = 7):
    """``fn(*args, **kwargs)`` on fresh copies; returns (output, gradients of the inputs that
    require grad) for a fixed random cotangent."""
    args = [_clone(a) for a in args]
    kwargs = {k: _clone(v) for k, v in (kwargs or {}).items()}
    out = fn(*args, **kwargs)
    leaves = [a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = []
    if leaves and isinstance(out, torch.Tensor) and out.requires_grad:
        g = torch.Generator().manual_seed(cotangent_seed)
        cot = torch.randn(out.shape, generator=g, dtype=out.dtype)
        grads = list(torch.autograd.grad(out, leaves, cot, allow_unused=True))
    return out, grads


def assert_same(ours, theirs, iterative: bool = False) -> None:
    """Equal outputs and gradients (the suite's float32 tolerance)."""
    (o1, g1), (o2, g2) = ours, theirs
    assert_close(o1.detach(), o2.detach(), iterative=iterative)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, iterative=iterative)


def module_outputs(module: torch.nn.Module, x: torch.Tensor, train: bool):
    """The module's output and the gradients of its input and parameters, in train or eval mode."""
    module.train(train)
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    params = [p for p in module.parameters() if p.requires_grad]
    if not out.requires_grad:
        return out, []
    g = torch.Generator().manual_seed(3)
    cot = torch.randn(out.shape, generator=g, dtype=out.dtype)
    return out, list(torch.autograd.grad(out, [x, *params], cot, allow_unused=True))
