"""Whole models on the device: constrained layers trained in float32 and under bf16 autocast, eager
and compiled, checked against float64 CPU and against independent operator-norm measurements.

Every test takes a ``device`` parameter: the CPU parameters run everywhere (CI), the CUDA ones
(marked ``gpu``) on a GPU machine, where ``perf/gpu_check.sh`` runs them with the rest of
``pytest -m gpu``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _measure import OperatorNorm, dense_singular_values, plain_conv
from _tolerances import BOUND_SLACK, assert_close
from torch import nn

import liptriton

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.bfloat16]


def _net(c: int = 8, hidden: int = 32) -> nn.Sequential:
    """Layer classes (spectral convs and linear) and a Björck-orthogonal linear layer, 8x8x3 inputs."""
    return nn.Sequential(
        liptriton.SpectralConv2d(3, c, 3, padding=1),
        liptriton.GroupSort2(),
        liptriton.SpectralConv2d(c, c, 3, stride=2, padding=1),
        liptriton.GroupSort2(),
        nn.Flatten(),
        liptriton.bjorck(nn.Linear(c * 4 * 4, hidden)),
        liptriton.GroupSort2(),
        liptriton.SpectralLinear(hidden, 10),
    )


def _data(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(16, 3, 8, 8, device=device)
    y = nn.functional.one_hot(torch.arange(16, device=device) % 10, 10).float()
    return x, y


def _autocast(device: str, dtype: torch.dtype):
    return torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)


def _operator_norms(net: nn.Sequential, shapes: dict[int, tuple[int, ...]]) -> list[float]:
    """Every constrained layer's true operator norm, measured in float64 on CPU."""
    norms = []
    for i, m in enumerate(net):
        if isinstance(m, nn.Conv2d):
            plain = plain_conv(m, m.weight.detach().cpu())
            norms.append(OperatorNorm(shapes[i])(plain))
        elif isinstance(m, nn.Linear):
            norms.append(float(dense_singular_values(m.weight.cpu())[0]))
    return norms


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("device", DEVICES)
def test_training_steps_keep_the_bound(device, dtype):
    net = _net().to(device)
    x, y = _data(device)
    shapes: dict[int, tuple[int, ...]] = {}

    def record(i: int):
        def hook(mod, inp, out) -> None:
            shapes[i] = tuple(inp[0].shape[1:])

        return hook

    for i, m in enumerate(net):
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(record(i))
    loss_fn = liptriton.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            loss = loss_fn(net(x), y)
        loss.backward()
        assert torch.isfinite(loss)
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)
        opt.step()
        with torch.no_grad():
            net(x)  # the weights of the new parameters, as the next step sees them
        norms = _operator_norms(net, shapes)
        assert len(norms) == 4 and max(norms) <= 1 + BOUND_SLACK, norms
        assert min(norms) > 0.5, norms  # the bound is not wasted: each layer keeps most of its gain


@pytest.mark.gpu
def test_kernel_path_matches_torch_path():
    # the Triton kernels against the pure-torch references on CUDA, same weights and state,
    # training-mode forward and backward of the whole network (on CPU each kernel is held
    # against its reference under the interpreter, in the op tests: the whole network
    # interpreted takes 5-20 s)
    device = "cuda"
    net = _net()
    x, y = _data("cpu")
    liptriton.parametrizations.initialize(net, x)
    nets = [copy.deepcopy(net).to(device) for _ in range(2)]
    x, y = x.to(device), y.to(device)
    loss_fn = liptriton.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)
    results = []
    for model, forced in zip(nets, (False, True)):
        with liptriton.config.force_torch(forced):
            out = model(x)
            grads = torch.autograd.grad(loss_fn(out, y), list(model.parameters()))
        results.append((out.detach(), grads))
    (out, grads), (out_ref, grads_ref) = results
    assert_close(out, out_ref, dtype="gpu")
    for g, g_ref in zip(grads, grads_ref):
        assert_close(g, g_ref, dtype="gpu", iterative=True)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "bf16-autocast"])
def test_compiled_training_step_on_cuda(dtype):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    net = _net().cuda()
    x, y = _data("cuda")
    liptriton.parametrizations.initialize(net, x)
    eager = copy.deepcopy(net)
    loss_fn = liptriton.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)

    def fwd_loss(model):
        with _autocast("cuda", dtype):
            return loss_fn(model(x), y)

    compiled = torch.compile(fwd_loss, fullgraph=True)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (net, eager)]
    for _ in range(3):
        losses = []
        for model, fn, opt in ((net, compiled, opts[0]), (eager, fwd_loss, opts[1])):
            opt.zero_grad(set_to_none=True)
            loss = fn(model)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        assert_close(losses[0], losses[1], dtype=dtype if dtype == torch.bfloat16 else "gpu")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.gpu
def test_eager_training_step_has_no_host_sync():
    net = _net().cuda()
    x, y = _data("cuda")
    loss_fn = liptriton.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        opt.step()

    step()  # first step: the layers learn their input size and converge their state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()  # a host sync (.item(), eigh's info check, a device-to-host copy) raises here
    finally:
        torch.cuda.set_sync_debug_mode("default")
