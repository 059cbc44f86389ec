"""Launchers of the Björck kernels: validate, lay out, pick fused or tiled, launch.

Paths (``min(m, n)`` is the side of the Gram):

* fused (``min(m, n) <= fused_max_small``, default :data:`FUSED_MAX_SMALL` = 64): one program
  per matrix runs all ``n_iters`` steps (kernels/bjorck_fused.py); any ``max(m, n)``, streamed
  in column chunks. Batched (B, m, n): B programs.
* tiled (``min(m, n) > fused_max_small``): tiled matmuls with the update in the epilogue
  (kernels/bjorck_tiled.py), two launches per order-1 step.

Every path computes in float32 (half inputs are upcast on load) and returns float32; the
caller casts back. The forward keeps nothing; the backward recomputes the iterates.
"""

from __future__ import annotations

import torch
import triton
from liptriton.kernels._helpers import coeffs5, launch
from liptriton.kernels.bjorck_fused import _bjorck_fused_bwd_kernel, _bjorck_fused_fwd_kernel
from liptriton.kernels.bjorck_tiled import bjorck_tiled_backward, bjorck_tiled_forward

__all__ = ["FUSED_MAX_SMALL", "bjorck_backward", "bjorck_forward", "fused_fits"]

#: Largest Gram side (min(m, n)) of the one-program-per-matrix kernels. Compiled for sm_90 the
#: fused backward at 64 takes 90-100 KiB of shared memory and 15-50 s to compile (ieee dots);
#: at 128 it needs more shared memory than a block may have.
FUSED_MAX_SMALL = 64


def fused_fits(m: int, n: int, fused_max_small: int | None = None) -> bool:
    """Return True when an (m, n) matrix takes the fused path (``min(m, n) <= fused_max_small``)."""
    limit = FUSED_MAX_SMALL if fused_max_small is None else fused_max_small
    return min(m, n) <= limit


def _blocks(s_max: int, l_max: int, device: torch.device) -> dict[str, int]:
    block_s = max(16, triton.next_power_of_2(s_max))
    # GPU: chunks of <= 2048 elements keep shared memory (tl.dot operand staging) under ~100 KiB;
    # the interpreter (CPU) runs fewer, larger numpy blocks faster
    budget = 2048 if device.type == "cuda" else 16384
    block_l = max(16, min(triton.next_power_of_2(l_max), budget // block_s))
    return {"BLOCK_S": block_s, "BLOCK_L": block_l, "num_warps": 4 if block_s <= 32 else 8}


def _check_batch(w: torch.Tensor, n_iters: int) -> None:
    if w.dim() != 3 or not w.is_floating_point():
        raise ValueError(f"bjorck kernels: expected a floating (B, m, n) tensor, got {w.dtype} "
                         f"{tuple(w.shape)}")
    if n_iters < 1:
        raise ValueError(f"bjorck kernels: n_iters must be >= 1, got {n_iters}")


def _layout(m: int, n: int) -> tuple[int, int, int, int]:
    """(S, L, stride_s, stride_l) of the wide view of a contiguous (m, n) matrix."""
    return (m, n, n, 1) if m < n else (n, m, 1, n)


def bjorck_forward(w: torch.Tensor, n_iters: int, coeffs: tuple[float, ...], *,
                   fused_max_small: int | None = None, precision: str = "ieee") -> torch.Tensor:
    """``n_iters`` Björck steps of each matrix of ``w`` (B, m, n); returns float32 (B, m, n).

    ``fused_max_small`` overrides :data:`FUSED_MAX_SMALL` (0 forces the tiled path);
    ``precision`` is the tl.dot input precision ("ieee" or "tf32").
    """
    _check_batch(w, n_iters)
    w = w.contiguous()
    b, m, n = w.shape
    if not fused_fits(m, n, fused_max_small):
        return bjorck_tiled_forward(w, n_iters, tuple(coeffs), precision=precision)
    y = torch.empty((b, m, n), device=w.device, dtype=torch.float32)
    s, ln, stride_s, stride_l = _layout(m, n)
    launch(_bjorck_fused_fwd_kernel)[(b,)](
        w, y, s, ln, m * n, stride_s, stride_l, int(n_iters), *coeffs5(coeffs, "bjorck kernels"),
        ORDER=len(coeffs) - 1, PRECISION=precision, **_blocks(s, ln, w.device))
    return y


def bjorck_backward(w: torch.Tensor, grad: torch.Tensor, n_iters: int, coeffs: tuple[float, ...], *,
                    fused_max_small: int | None = None, precision: str = "ieee") -> torch.Tensor:
    """Gradient w.r.t. ``w`` (B, m, n) of :func:`bjorck_forward`, given ``grad`` of its output."""
    _check_batch(w, n_iters)
    w = w.contiguous()
    grad = grad.contiguous()  # an expanded grad (stride 0) would be read wrongly otherwise
    b, m, n = w.shape
    if not fused_fits(m, n, fused_max_small):
        return bjorck_tiled_backward(w, grad, n_iters, tuple(coeffs), precision=precision)
    dx = torch.empty((b, m, n), device=w.device, dtype=torch.float32)
    scratch = torch.empty((n_iters, b, m, n), device=w.device, dtype=torch.float32)
    s, ln, stride_s, stride_l = _layout(m, n)
    launch(_bjorck_fused_bwd_kernel)[(b,)](
        w, grad, dx, scratch, s, ln, m * n, stride_s, stride_l, int(n_iters), b * m * n,
        *coeffs5(coeffs, "bjorck kernels"), ORDER=len(coeffs) - 1, PRECISION=precision,
        **_blocks(s, ln, w.device))
    return dx
