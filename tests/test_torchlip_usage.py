"""The usage example of deel-torchlip (shared/reference/torchlip-usage.txt) with
``import liptriton as torchlip``: trains, stays 1-Lipschitz, compiles with fullgraph."""

from __future__ import annotations

import copy

import pytest
import torch
from _measure import OperatorNorm, dense_singular_values, plain_conv
from _tolerances import BOUND_SLACK

import liptriton as torchlip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def usage_model(c: int = 32, size: int = 28) -> torch.nn.Sequential:
    """The network of the usage example (``c`` channels, ``size`` x ``size`` inputs; 32 and 28 there)."""
    return torch.nn.Sequential(
        torchlip.SpectralConv2d(1, c, (3, 3), padding=1),
        torchlip.SpectralConv2d(c, c, (3, 3), padding=1),
        torch.nn.MaxPool2d(kernel_size=(2, 2)),
        torchlip.SpectralConv2d(c, c, (3, 3), padding=1),
        torchlip.SpectralConv2d(c, c, (3, 3), padding=1),
        torch.nn.MaxPool2d(kernel_size=(2, 2)),
        torch.nn.Flatten(),
        torchlip.SpectralLinear(c * (size // 4) ** 2, 256),
        torchlip.SpectralLinear(256, 1),
    )


def synthetic_mnist_08(batches: int, batch_size: int = 8, size: int = 28):
    """Two classes (+1 / -1 labels, both in every batch: the KR term needs both) of noisy images
    that differ by a blob."""
    g = torch.Generator().manual_seed(1)
    for _ in range(batches):
        target = (torch.arange(batch_size) % 2).float().view(-1, 1) * 2 - 1
        target = target[torch.randperm(batch_size, generator=g)]
        data = torch.rand(batch_size, 1, size, size, generator=g) * 0.3
        data[:, :, 8:20, 8:20] += 0.5 * (target > 0).float().view(-1, 1, 1, 1)
        yield data, target


def measured_bound(model: torch.nn.Sequential, size: int) -> float:
    """Upper bound of the model's Lipschitz constant: the product of each layer's measured operator
    norm (float64 power iteration on the convolution at its input size; SVD for dense layers);
    MaxPool with stride = kernel and Flatten are 1-Lipschitz."""
    bound, spatial, channels = 1.0, size, 1
    for layer in model:
        if isinstance(layer, torch.nn.Conv2d):
            bound *= OperatorNorm((channels, spatial, spatial), first=150)(plain_conv(layer, layer.weight))
            channels = layer.out_channels
        elif isinstance(layer, torch.nn.Linear):
            bound *= float(dense_singular_values(layer.weight)[0])
        elif isinstance(layer, torch.nn.MaxPool2d):
            spatial //= 2
    return bound


def test_usage_example_trains_and_stays_1_lipschitz():
    device = torch.device("cpu")
    model = usage_model().to(device)
    # as in the example: Adam at lr 0.01, hkr_loss; alpha in [0, 1] (the example's alpha=10 fails in
    # deel-torchlip 1.0.5 too: `assert alpha <= 1.0`)
    optimizer = torch.optim.Adam(lr=0.01, params=model.parameters())
    losses = []
    for data, target in synthetic_mnist_08(batches=3):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = torchlip.functional.hkr_loss(output, target, alpha=0.9, min_margin=1).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    model.eval()
    bound = measured_bound(model, 28)
    assert bound <= 1 + BOUND_SLACK
    # the whole model at a point: its Jacobian norm (a lower bound) cannot exceed the bound
    x0 = torch.rand(1, 1, 28, 28)
    v = torch.randn_like(x0)
    for _ in range(10):
        v = torch.autograd.functional.vjp(model, x0, torch.autograd.functional.jvp(model, x0, v / v.norm())[1])[1]
    assert float(v.norm()) ** 0.5 <= bound * (1 + 1e-6)


def test_usage_example_compiles_fullgraph_without_recompiles():
    """Small version of the usage network (4 channels, 12 x 12), fullgraph (a graph break raises),
    one graph for all training steps, losses equal to an eager copy's."""
    torch._dynamo.reset()
    model = usage_model(c=4, size=12)
    x = torch.rand(4, 1, 12, 12)
    target = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    torchlip.parametrizations.initialize(model, x)  # learn input sizes before compiling
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    opt_compiled = torch.optim.Adam(lr=0.01, params=model.parameters())
    opt_eager = torch.optim.Adam(lr=0.01, params=eager.parameters())
    torch._dynamo.utils.counters.clear()
    for _ in range(2):
        losses = []
        for net, opt in ((compiled, opt_compiled), (eager, opt_eager)):
            opt.zero_grad()
            loss = torchlip.functional.hkr_loss(net(x), target, alpha=0.9, min_margin=1).mean()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1  # no recompilation across steps
