"""Power iteration kernels: ``v <- W^T u / ||.||``, ``u <- W v / ||.||``, n times.

Two variants, both memory-bound matrix-vector products in float32 (elementwise products
and ``tl.sum``, no ``tl.dot``: the result is exact float32 on GPU too, no tf32):

* fused: one program per matrix runs every step. W is streamed from global memory in
  (BLOCK_M, BLOCK_N) tiles at each step; the two vectors live, unnormalized, in float32
  scratch (the outputs themselves) and their inverse norms in registers, so a step costs two
  reads of W and nothing else. Barriers order the scratch writes of one pass before the
  reads of the next (all inside one program).
* tiled: for large matrices, each step is two launches over blocks of columns (``W^T u``)
  and rows (``W v``); every program recomputes the norm of the (small) input vector itself,
  so no cross-program reduction is needed.

Layout: W is contiguous (B, m, n); u is (B, m), v is (B, n).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import launch

__all__ = ["power_iteration_forward"]

_FUSED_MAX_ELEMENTS = 1 << 18  # one program per matrix up to 512 x 512 (or when B fills the GPU)
_FUSED_MIN_BATCH = 64


@triton.jit
def _power_iteration_fused_kernel(p_w, p_u_in, p_u, p_v, m, n, n_iters, eps,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    p_w += i_b * m * n
    p_u_in += i_b * m
    p_u += i_b * m
    p_v += i_b * n
    eps = tl.cast(eps, tl.float32)
    # The raw u starts as the input u; its scale does not matter (it is divided out).
    sq_u = tl.zeros([BLOCK_M], dtype=tl.float32)
    for s_m in range(0, m, BLOCK_M):
        o_m = s_m + tl.arange(0, BLOCK_M)
        m_m = o_m < m
        b_u = tl.load(p_u_in + o_m, mask=m_m, other=0.0).to(tl.float32)
        tl.store(p_u + o_m, b_u, mask=m_m)
        sq_u += b_u * b_u
    inv_u = 1.0 / tl.maximum(tl.sqrt(tl.sum(sq_u, axis=0)), eps)
    inv_v = inv_u
    tl.debug_barrier()
    for _ in range(n_iters):
        # v_raw = W^T (u_raw / ||u_raw||): columns outer, rows inner.
        sq_v = tl.zeros([BLOCK_N], dtype=tl.float32)
        for s_n in range(0, n, BLOCK_N):
            o_n = s_n + tl.arange(0, BLOCK_N)
            m_n = o_n < n
            acc = tl.zeros([BLOCK_N], dtype=tl.float32)
            for s_m in range(0, m, BLOCK_M):
                o_m = s_m + tl.arange(0, BLOCK_M)
                m_m = o_m < m
                b_u = tl.load(p_u + o_m, mask=m_m, other=0.0)
                b_w = tl.load(p_w + o_m[:, None] * n + o_n[None, :], mask=m_m[:, None] & m_n[None, :],
                              other=0.0).to(tl.float32)
                acc += tl.sum(b_w * b_u[:, None], axis=0)
            acc = acc * inv_u
            tl.store(p_v + o_n, acc, mask=m_n)
            sq_v += acc * acc
        inv_v = 1.0 / tl.maximum(tl.sqrt(tl.sum(sq_v, axis=0)), eps)
        tl.debug_barrier()
        # u_raw = W (v_raw / ||v_raw||): rows outer, columns inner.
        sq_u = tl.zeros([BLOCK_M], dtype=tl.float32)
        for s_m in range(0, m, BLOCK_M):
            o_m = s_m + tl.arange(0, BLOCK_M)
            m_m = o_m < m
            acc = tl.zeros([BLOCK_M], dtype=tl.float32)
            for s_n in range(0, n, BLOCK_N):
                o_n = s_n + tl.arange(0, BLOCK_N)
                m_n = o_n < n
                b_v = tl.load(p_v + o_n, mask=m_n, other=0.0)
                b_w = tl.load(p_w + o_m[:, None] * n + o_n[None, :], mask=m_m[:, None] & m_n[None, :],
                              other=0.0).to(tl.float32)
                acc += tl.sum(b_w * b_v[None, :], axis=1)
            acc = acc * inv_v
            tl.store(p_u + o_m, acc, mask=m_m)
            sq_u += acc * acc
        inv_u = 1.0 / tl.maximum(tl.sqrt(tl.sum(sq_u, axis=0)), eps)
        tl.debug_barrier()
    # Normalize the scratch in place: each element is read and written by the same thread.
    for s_m in range(0, m, BLOCK_M):
        o_m = s_m + tl.arange(0, BLOCK_M)
        m_m = o_m < m
        tl.store(p_u + o_m, tl.load(p_u + o_m, mask=m_m, other=0.0) * inv_u, mask=m_m)
    for s_n in range(0, n, BLOCK_N):
        o_n = s_n + tl.arange(0, BLOCK_N)
        m_n = o_n < n
        tl.store(p_v + o_n, tl.load(p_v + o_n, mask=m_n, other=0.0) * inv_v, mask=m_n)


@triton.jit
def _inv_norm(p_x, size, eps, BLOCK: tl.constexpr):
    """1 / max(||x||, eps) of a vector of ``size`` elements (float32)."""
    sq = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(0, size, BLOCK):
        o = s + tl.arange(0, BLOCK)
        b_x = tl.load(p_x + o, mask=o < size, other=0.0).to(tl.float32)
        sq += b_x * b_x
    return 1.0 / tl.maximum(tl.sqrt(tl.sum(sq, axis=0)), tl.cast(eps, tl.float32))


@triton.jit
def _matvec_t_kernel(p_w, p_x, p_y, m, n, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y[block of columns] = W^T x / max(||x||, eps); grid (cdiv(n, BLOCK_N), B)."""
    i_n, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    p_w += i_b * m * n
    p_x += i_b * m
    p_y += i_b * n
    inv_x = _inv_norm(p_x, m, eps, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < n
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for s_m in range(0, m, BLOCK_M):
        o_m = s_m + tl.arange(0, BLOCK_M)
        m_m = o_m < m
        b_x = tl.load(p_x + o_m, mask=m_m, other=0.0).to(tl.float32)
        b_w = tl.load(p_w + o_m[:, None] * n + o_n[None, :], mask=m_m[:, None] & m_n[None, :],
                      other=0.0).to(tl.float32)
        acc += tl.sum(b_w * b_x[:, None], axis=0)
    tl.store(p_y + o_n, acc * inv_x, mask=m_n)


@triton.jit
def _matvec_kernel(p_w, p_x, p_y, m, n, eps, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y[block of rows] = W x / max(||x||, eps); grid (cdiv(m, BLOCK_M), B)."""
    i_m, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    p_w += i_b * m * n
    p_x += i_b * n
    p_y += i_b * m
    inv_x = _inv_norm(p_x, n, eps, BLOCK_N)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < m
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for s_n in range(0, n, BLOCK_N):
        o_n = s_n + tl.arange(0, BLOCK_N)
        m_n = o_n < n
        b_x = tl.load(p_x + o_n, mask=m_n, other=0.0).to(tl.float32)
        b_w = tl.load(p_w + o_m[:, None] * n + o_n[None, :], mask=m_m[:, None] & m_n[None, :],
                      other=0.0).to(tl.float32)
        acc += tl.sum(b_w * b_x[None, :], axis=1)
    tl.store(p_y + o_m, acc * inv_x, mask=m_m)


@triton.jit
def _normalize_kernel(p_x, size, eps, BLOCK: tl.constexpr):
    """x <- x / max(||x||, eps) in place, one program per vector; grid (B,)."""
    i_b = tl.program_id(0).to(tl.int64)
    p_x += i_b * size
    inv_x = _inv_norm(p_x, size, eps, BLOCK)
    for s in range(0, size, BLOCK):
        o = s + tl.arange(0, BLOCK)
        m_x = o < size
        tl.store(p_x + o, tl.load(p_x + o, mask=m_x, other=0.0) * inv_x, mask=m_x)


def _pick_variant(batch: int, m: int, n: int) -> str:
    return "fused" if m * n <= _FUSED_MAX_ELEMENTS or batch >= _FUSED_MIN_BATCH else "tiled"


def power_iteration_forward(w: torch.Tensor, u: torch.Tensor, n_iters: int, eps: float,
                            variant: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``n_iters`` power-iteration steps on a batch of matrices (float32 compute).

    Args:
        w: (B, m, n) matrices, any floating dtype (read as float32).
        u: (B, m) initial left vectors (only their direction matters).
        n_iters: number of steps, >= 1.
        eps: floor of the norms.
        variant: "fused" (one program per matrix), "tiled" (two launches per step), or None
            to choose by size.

    Returns:
        ``(u, v)``: float32 unit vectors of shapes (B, m) and (B, n).

    Examples:
        >>> w = torch.randn(2, 64, 32, device="cuda")  # doctest: +SKIP
        >>> u, v = power_iteration_forward(w, torch.randn(2, 64, device="cuda"), 10, 1e-12)  # doctest: +SKIP
    """
    if w.dim() != 3 or u.shape != w.shape[:2]:
        raise ValueError(f"power_iteration_forward: expected w (B, m, n) and u (B, m), got "
                         f"{tuple(w.shape)} and {tuple(u.shape)}")
    if n_iters < 1:
        raise ValueError(f"power_iteration_forward: n_iters must be >= 1, got {n_iters}")
    batch, m, n = w.shape
    w, u = w.contiguous(), u.contiguous()
    eps = float(eps)
    variant = variant or _pick_variant(batch, m, n)
    u_out = torch.empty((batch, m), device=w.device, dtype=torch.float32)
    v_out = torch.empty((batch, n), device=w.device, dtype=torch.float32)
    block_m = min(64, triton.next_power_of_2(m))
    block_n = min(64, triton.next_power_of_2(n))
    if variant == "fused":
        launch(_power_iteration_fused_kernel)[(batch,)](
            w, u, u_out, v_out, m, n, int(n_iters), eps, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=8)
    elif variant == "tiled":
        # Columns split finely for W^T u (each program streams a (m, BLOCK) column slab).
        block_c = min(32, triton.next_power_of_2(n))
        block_r = min(32, triton.next_power_of_2(m))
        grid_t = (triton.cdiv(n, block_c), batch)
        grid = (triton.cdiv(m, block_r), batch)
        x = u
        for _ in range(int(n_iters)):
            launch(_matvec_t_kernel)[grid_t](
                w, x, v_out, m, n, eps, BLOCK_M=block_m, BLOCK_N=block_c, num_warps=4)
            launch(_matvec_kernel)[grid](
                w, v_out, u_out, m, n, eps, BLOCK_M=block_r, BLOCK_N=block_n, num_warps=4)
            x = u_out
        # u_out = W v_raw / ||v_raw|| still needs its own normalization; v_out too.
        launch(_normalize_kernel)[(batch,)](u_out, m, eps, BLOCK=block_m, num_warps=4)
        launch(_normalize_kernel)[(batch,)](v_out, n, eps, BLOCK=block_n, num_warps=4)
    else:
        raise ValueError(f"power_iteration_forward: variant must be 'fused', 'tiled' or None, "
                         f"got {variant!r}")
    return u_out, v_out
