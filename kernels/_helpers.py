"""Helpers shared by the kernels: compute dtypes, index math, Björck coefficients, the launch.

Vocabulary of every kernel (flash-linear-attention's): ``i_*`` program ids, ``o_*`` offsets,
``m_*`` masks, ``p_*`` pointers (arguments included: ``p_x``, never ``x_ptr``), ``b_*`` blocks.
Every launcher starts its kernels with :func:`launch` (``torch.library.wrap_triton``), so that
the ``triton_op`` that calls it stays visible to torch.compile and runs eagerly too.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch.library import wrap_triton

__all__ = ["INT32_LIMIT", "acc", "coeffs5", "launch", "offsets", "upcast"]

INT32_LIMIT = 2**31  # offsets at or above this use int64 index math


def launch(kernel):
    """The launchable form of ``kernel`` (``kernel_launch(kernel)[grid](...)``): wrapped by
    ``torch.library.wrap_triton`` (traceable inside a triton_op, a plain launch outside)."""
    return wrap_triton(kernel)


def coeffs5(coeffs: tuple[float, ...], who: str) -> list[float]:
    """A Björck polynomial's 2 to 5 coefficients (orders 1-4) padded with zeros to 5 kernel arguments."""
    if not 2 <= len(coeffs) <= 5:
        raise ValueError(f"{who}: expected 2 to 5 coefficients (order 1-4), got {len(coeffs)}")
    return [float(c) for c in coeffs] + [0.0] * (5 - len(coeffs))


@triton.jit
def acc(x, IS_FP64: tl.constexpr):
    """Upcast to the accumulation dtype chosen by the launcher: float64 for float64 inputs, else float32."""
    if IS_FP64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def upcast(b):
    """Upcast a loaded block by its own dtype: float16/bfloat16/float32 to float32; float64 stays."""
    if b.dtype != tl.float64:
        b = b.to(tl.float32)
    return b


@triton.jit
def offsets(i_b, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """The offsets of program ``i_b``'s block: int32 index math (a cheap division) while every
    offset fits in int32 (``INT64`` False), int64 otherwise."""
    o = i_b * BLOCK + tl.arange(0, BLOCK)
    if INT64:
        o = i_b.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return o
