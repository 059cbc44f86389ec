"""The two ceilings of a device, as benchmark cases: a device-to-device copy (bandwidth) and a
large matrix product (arithmetic rate), measured where the other cases run so that their
fractions of the ceiling can be read off one run.

``copy``: ``dst.copy_(src)`` of ``n`` float32 elements; bytes moved = 8 n (read + write).
``matmul``: an ``n x n x n`` product, 2 n^3 FLOPs, by provider: ``torch-fp32`` (full float32),
``torch-tf32`` (float32 inputs on the tensor cores' tf32 mode, what a Triton float32 ``tl.dot``
uses by default) and ``torch-bf16``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

__all__ = ["MATMUL_PROVIDERS", "copy_bytes", "make_copy", "make_matmul", "matmul_flops"]

MATMUL_PROVIDERS = ["torch-fp32", "torch-tf32", "torch-bf16"]


def copy_bytes(n: int) -> int:
    """Bytes moved by the ``copy`` case at size ``n`` (read + write, float32)."""
    return 8 * n


def matmul_flops(n: int) -> int:
    """FLOPs of the ``matmul`` case at size ``n``."""
    return 2 * n**3


def make_copy(provider: str, n: int, device: str) -> Callable[[], object]:
    """One device-to-device copy of ``n`` random float32 elements (``provider``: "torch")."""
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


@contextlib.contextmanager
def _tf32(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def make_matmul(provider: str, n: int, device: str) -> Callable[[], object]:
    """One ``n x n x n`` product of random matrices in the provider's precision.

    Example:
        >>> make_matmul("torch-bf16", 8, "cpu")().dtype
        torch.bfloat16
    """
    if provider not in MATMUL_PROVIDERS:
        raise ValueError(f"matmul: unknown provider {provider!r}; expected one of {MATMUL_PROVIDERS}")
    dtype = torch.bfloat16 if provider == "torch-bf16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)

    def call() -> torch.Tensor:
        with _tf32(provider == "torch-tf32"):
            return torch.mm(a, b, out=out)

    return call
