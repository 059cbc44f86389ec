"""Suite-wide setup: Triton interpreter on CPU, NaN-filled allocations, GPU marker."""

from __future__ import annotations

import os

# Triton reads TRITON_INTERPRET when a kernel is defined: set it before anything imports
# triton, on machines without CUDA, so the kernels can run on CPU tensors in tests.
_HAS_CUDA = False
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    pass
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import liptriton  # noqa: E402


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not _HAS_CUDA:
            item.add_marker(skip_gpu)


# One intra-op thread per test process: pytest-xdist runs one process per core, and tiny
# convolutions run 100x slower when threads oversubscribe the cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def interpret():
    """Run the Triton kernels on CPU through the interpreter for the duration of a test."""
    if _HAS_CUDA:
        yield  # on CUDA the kernels run natively
        return
    with liptriton.config.interpret(True):
        yield


@pytest.fixture
def nan_empty(monkeypatch):
    """Fill every float allocation made with torch.empty* with NaN (unwritten outputs fail)."""
    real_empty, real_like, real_strided = torch.empty, torch.empty_like, torch.empty_strided

    def _fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: _fill(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _fill(real_like(*a, **k)))
    monkeypatch.setattr(torch, "empty_strided", lambda *a, **k: _fill(real_strided(*a, **k)))
    yield


@pytest.fixture
def device():
    return torch.device("cuda" if _HAS_CUDA else "cpu")
