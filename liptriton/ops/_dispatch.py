"""Where an op runs: its Triton kernel (CUDA, or CPU under the interpreter) or its torch reference.

Every public op calls :func:`use_triton` in Python, *before* the ``triton_op``: off CUDA and
while compiling on CPU it takes the torch reference, so torch.compile never sees a triton_op
on CPU. Inside a triton_op body, :func:`kernel_runnable` decides whether the kernel can run
(otherwise the body falls back to the reference, which keeps ``torch.library.opcheck``
usable on CPU without the interpreter).
"""

from __future__ import annotations

import torch

from liptriton import config

try:  # triton is a Linux-only dependency; everything works without it.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised on platforms without triton
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "float32_compute", "kernel_runnable", "transforms_active", "use_triton"]


def use_triton(x: torch.Tensor) -> bool:
    """Return True when the public op should call its triton_op for tensor ``x``.

    Args:
        x: the op's main input tensor.

    Returns:
        True on CUDA (unless forced onto torch), or on CPU with the interpreter switch on
        and outside torch.compile; False otherwise.
    """
    if not HAS_TRITON or config.is_force_torch():
        return False
    if x.device.type == "cuda":
        return True
    if x.device.type == "cpu" and config.is_interpret():
        return not torch.compiler.is_compiling()
    return False


def kernel_runnable(x: torch.Tensor) -> bool:
    """Return True when a Triton kernel can run on ``x`` (inside a triton_op body).

    Args:
        x: a tensor the kernel reads.

    Returns:
        True on CUDA, or on CPU when the interpreter switch is on.
    """
    if not HAS_TRITON:
        return False
    return x.device.type == "cuda" or (x.device.type == "cpu" and config.is_interpret())


def float32_compute(x: torch.Tensor) -> torch.Tensor:
    """Upcast half-precision tensors to float32 (iterations that need it run in float32).

    Args:
        x: any floating tensor.

    Returns:
        ``x`` itself for float32/float64, ``x.float()`` for float16/bfloat16.
    """
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def transforms_active() -> bool:
    """Return True inside a torch.func transform (vmap, jacrev, ...) outside torch.compile.

    The triton_ops have no functorch rules, so the public ops take their torch reference there.

    Returns:
        Whether a functorch transform is active.

    Examples:
        >>> transforms_active()
        False
    """
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()
