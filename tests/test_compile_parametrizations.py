"""DESIGN invariant 3: torch.compile(fullgraph=True) of a model mixing all four parametrizations:
no graph break, compiled equals eager, no recompilation across training steps and eval steps."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo.testing
from torch import nn

import liptriton

pytestmark = pytest.mark.slow


def _model() -> nn.Module:
    return nn.Sequential(
        liptriton.spectral(nn.Conv2d(2, 4, 3, padding=1)),
        nn.ReLU(),
        liptriton.bjorck(nn.Conv2d(4, 4, 3, stride=2)),
        nn.ReLU(),
        nn.Flatten(),
        liptriton.householder(nn.Linear(36, 12)),
        nn.Tanh(),
        liptriton.frobenius(nn.Linear(12, 3), disjoint_neurons=False),
    )


def test_compiled_training_and_eval_match_eager_without_recompiling():
    torch._dynamo.reset()
    x = torch.randn(6, 2, 8, 8)
    model = liptriton.parametrizations.initialize(_model(), x)
    twin = copy.deepcopy(model)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt_twin = torch.optim.Adam(twin.parameters(), lr=1e-2)
    for step in range(5):
        batch = torch.randn(6, 2, 8, 8)
        loss = compiled(batch).square().mean()
        loss_twin = twin(batch).square().mean()
        torch.testing.assert_close(loss, loss_twin, rtol=1e-4, atol=1e-5, msg=f"step {step}")
        opt.zero_grad(), opt_twin.zero_grad()
        loss.backward(), loss_twin.backward()
        opt.step(), opt_twin.step()
    assert counter.frame_count == 1, f"recompiled during training: {counter.frame_count} graphs"

    model.eval(), twin.eval()
    with torch.no_grad():
        for _ in range(3):
            batch = torch.randn(6, 2, 8, 8)
            torch.testing.assert_close(compiled(batch), twin(batch), rtol=1e-4, atol=1e-5)
    assert counter.frame_count == 2, f"eval recompiled: {counter.frame_count} graphs in all"
