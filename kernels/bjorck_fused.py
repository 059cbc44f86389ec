"""Fused Björck kernels: all iterations of one small matrix inside one Triton program.

Layout. Every matrix is seen in its *wide* orientation ``X`` (S x L, S <= L): a wide weight
as it is, a tall or square one through its transpose (strides swapped, no copy). One step is

    G = X X^T (S x S),   P = p(G) = sum_i c_i G^i (Horner),   X <- P X

so the Gram is always on the smaller side and ``p`` of the Gram (an S x S matrix) is kept in
registers while X streams through in chunks of BLOCK_L columns. The iterate lives in the
output buffer (float32), updated in place chunk by chunk: column chunk k of ``P X`` reads
only column chunk k of X. A block barrier separates the phase that reads X (the Gram) from
the phase that overwrites it; loads of buffers the program writes bypass L1 (``.cg``).

Padding is exact: masked rows/columns load as 0, the Gram has zero rows/columns there and the
padded part of ``P X`` is never stored.

Precision: every tl.dot takes float32 operands and accumulates in float32; PRECISION is
"ieee" by default (true float32 products: the iteration must keep its bound, which tf32
rounding of ~1e-3 would blur). The Triton interpreter always computes exact float32.

Backward (one program per matrix): the kernel first reruns the forward, writing the iterates
X_0..X_{N-1} into a transient float32 scratch buffer (the op saved only W = X_0), then walks
the steps backward. For Y = P X with P = p(G), G = X X^T and upstream gradient dY:

    dP = dY X^T,   dG = reverse-mode Horner of p at G applied to dP,
    dX = P^T dY + (dG + dG^T) X.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _coef(k: tl.constexpr, c0, c1, c2, c3, c4):
    c = c0
    if k == 1:
        c = c1
    if k == 2:
        c = c2
    if k == 3:
        c = c3
    if k == 4:
        c = c4
    return c


@triton.jit
def _gram(p_x, S, L, stride_s, stride_l, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr,
          PRECISION: tl.constexpr):
    """G = X X^T, streamed over column chunks of X."""
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < S
    b_g = tl.zeros((BLOCK_S, BLOCK_S), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        o_l = l0 + tl.arange(0, BLOCK_L)
        m_x = m_s[:, None] & (o_l < L)[None, :]
        b_x = tl.load(p_x + o_s[:, None] * stride_s + o_l[None, :] * stride_l, mask=m_x, other=0.0,
                      cache_modifier=".cg").to(tl.float32)
        b_g = tl.dot(b_x, tl.trans(b_x), b_g, input_precision=PRECISION)
    return b_g


@triton.jit
def _horner(b_g, K: tl.constexpr, FIRST: tl.constexpr, c0, c1, c2, c3, c4, BLOCK_S: tl.constexpr,
            PRECISION: tl.constexpr):
    """P_FIRST = sum_{i >= FIRST} c_i G^(i - FIRST) by Horner (c_K I, then P <- G P + c_i I).

    (The polynomial of the Gram is formed on S x S, then applied once to X: P X costs the
    same as the reference's Horner on X for order 1 and less for higher orders.)"""
    o_s = tl.arange(0, BLOCK_S)
    b_eye = (o_s[:, None] == o_s[None, :]).to(tl.float32)
    b_p = b_eye * _coef(K, c0, c1, c2, c3, c4)
    for i in tl.static_range(K - 1, FIRST - 1, -1):
        b_p = tl.dot(b_g, b_p, input_precision=PRECISION) + b_eye * _coef(i, c0, c1, c2, c3, c4)
    return b_p


@triton.jit
def _apply(p_x, p_y, b_p, S, L, sx_s, sx_l, sy_s, sy_l, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr,
           PRECISION: tl.constexpr):
    """Y = P X chunk by chunk (Y may alias X: chunk k of Y reads only chunk k of X)."""
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < S
    for l0 in range(0, L, BLOCK_L):
        o_l = l0 + tl.arange(0, BLOCK_L)
        m_x = m_s[:, None] & (o_l < L)[None, :]
        b_x = tl.load(p_x + o_s[:, None] * sx_s + o_l[None, :] * sx_l, mask=m_x, other=0.0,
                      cache_modifier=".cg").to(tl.float32)
        b_y = tl.dot(b_p, b_x, input_precision=PRECISION)
        tl.store(p_y + o_s[:, None] * sy_s + o_l[None, :] * sy_l, b_y, mask=m_x)


@triton.jit
def _copy(p_src, p_dst, S, L, stride_s, stride_l, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr):
    """dst <- float32(src), same layout."""
    o_s = tl.arange(0, BLOCK_S)
    for l0 in range(0, L, BLOCK_L):
        o_l = l0 + tl.arange(0, BLOCK_L)
        m_x = (o_s < S)[:, None] & (o_l < L)[None, :]
        o_x = o_s[:, None] * stride_s + o_l[None, :] * stride_l
        tl.store(p_dst + o_x, tl.load(p_src + o_x, mask=m_x, other=0.0).to(tl.float32), mask=m_x)


@triton.jit
def _step(p_x, p_y, S, L, stride_s, stride_l, c0, c1, c2, c3, c4, ORDER: tl.constexpr, BLOCK_S: tl.constexpr,
          BLOCK_L: tl.constexpr, PRECISION: tl.constexpr):
    """Y <- p(X X^T) X (p_y may equal p_x), between block barriers."""
    tl.debug_barrier()  # the previous writes of X are visible to the whole block
    b_g = _gram(p_x, S, L, stride_s, stride_l, BLOCK_S, BLOCK_L, PRECISION)
    b_p = _horner(b_g, ORDER, 0, c0, c1, c2, c3, c4, BLOCK_S, PRECISION)
    tl.debug_barrier()  # every Gram load is done before X is overwritten
    _apply(p_x, p_y, b_p, S, L, stride_s, stride_l, stride_s, stride_l, BLOCK_S, BLOCK_L, PRECISION)


@triton.jit
def _bjorck_fused_fwd_kernel(p_w, p_y, S, L, stride_b, stride_s, stride_l, n_iters,
                             c0, c1, c2, c3, c4, ORDER: tl.constexpr,
                             BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr, PRECISION: tl.constexpr):
    off = tl.program_id(0).to(tl.int64) * stride_b
    p_y = p_y + off
    # the float32 iterate lives in Y; one copy of W first keeps a single (in-place) step in the code
    _copy(p_w + off, p_y, S, L, stride_s, stride_l, BLOCK_S, BLOCK_L)
    for _ in range(0, n_iters):
        _step(p_y, p_y, S, L, stride_s, stride_l, c0, c1, c2, c3, c4, ORDER, BLOCK_S, BLOCK_L, PRECISION)


@triton.jit
def _bwd_step(p_x, p_d, S, L, stride_s, stride_l, c0, c1, c2, c3, c4, ORDER: tl.constexpr,
              BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr, PRECISION: tl.constexpr):
    """D <- dX of one step X -> p(X X^T) X, in place; p_d holds dY on entry (float32)."""
    o_s = tl.arange(0, BLOCK_S)
    m_s = o_s < S
    b_eye = (o_s[:, None] == o_s[None, :]).to(tl.float32)
    b_g = _gram(p_x, S, L, stride_s, stride_l, BLOCK_S, BLOCK_L, PRECISION)
    # dP = dY X^T
    b_dp = tl.zeros((BLOCK_S, BLOCK_S), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        o_l = l0 + tl.arange(0, BLOCK_L)
        m_x = m_s[:, None] & (o_l < L)[None, :]
        o_x = o_s[:, None] * stride_s + o_l[None, :] * stride_l
        b_x = tl.load(p_x + o_x, mask=m_x, other=0.0, cache_modifier=".cg")
        b_dy = tl.load(p_d + o_x, mask=m_x, other=0.0, cache_modifier=".cg")
        b_dp = tl.dot(b_dy, tl.trans(b_x), b_dp, input_precision=PRECISION)
    # Reverse mode of Horner (P_k = G P_{k+1} + c_k I): dG = sum_k (G^T)^k dP P_{k+1}^T, itself
    # by Horner from k = ORDER-1 down to 0, in the order the forward Horner produces P_{k+1}.
    b_p = b_eye * _coef(ORDER, c0, c1, c2, c3, c4)  # P_ORDER
    b_dg = b_dp * _coef(ORDER, c0, c1, c2, c3, c4)  # dP P_ORDER^T
    for k in tl.static_range(ORDER - 2, -1, -1):
        b_p = tl.dot(b_g, b_p, input_precision=PRECISION) + b_eye * _coef(k + 1, c0, c1, c2, c3, c4)
        b_dg = tl.dot(tl.trans(b_g), b_dg, input_precision=PRECISION)
        b_dg = tl.dot(b_dp, tl.trans(b_p), b_dg, input_precision=PRECISION)
    b_pt = tl.trans(tl.dot(b_g, b_p, input_precision=PRECISION) + b_eye * c0)  # P_0^T
    b_gs = b_dg + tl.trans(b_dg)
    tl.debug_barrier()  # all reads of dY done before it is overwritten
    # dX = P^T dY + (dG + dG^T) X, chunk k reads only chunk k of dY
    for l0 in range(0, L, BLOCK_L):
        o_l = l0 + tl.arange(0, BLOCK_L)
        m_x = m_s[:, None] & (o_l < L)[None, :]
        o_x = o_s[:, None] * stride_s + o_l[None, :] * stride_l
        b_x = tl.load(p_x + o_x, mask=m_x, other=0.0, cache_modifier=".cg")
        b_dy = tl.load(p_d + o_x, mask=m_x, other=0.0, cache_modifier=".cg")
        b_dx = tl.dot(b_pt, b_dy, input_precision=PRECISION)
        b_dx = tl.dot(b_gs, b_x, b_dx, input_precision=PRECISION)
        tl.store(p_d + o_x, b_dx, mask=m_x)
    tl.debug_barrier()


@triton.jit
def _bjorck_fused_bwd_kernel(p_w, p_gy, p_dx, p_scratch, S, L, stride_b, stride_s, stride_l,
                             n_iters, scratch_stride, c0, c1, c2, c3, c4, ORDER: tl.constexpr,
                             BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr, PRECISION: tl.constexpr):
    off = tl.program_id(0).to(tl.int64) * stride_b
    p_dx = p_dx + off
    # scratch slot t (0 <= t < n_iters) holds the iterate X_t, in the layout of W; pointers are
    # advanced one slot at a time (64-bit, no int32 product)
    p_x = p_scratch + off
    _copy(p_w + off, p_x, S, L, stride_s, stride_l, BLOCK_S, BLOCK_L)
    # 1. recompute the iterates X_1 .. X_{N-1}
    for _ in range(1, n_iters):
        _step(p_x, p_x + scratch_stride, S, L, stride_s, stride_l, c0, c1, c2, c3, c4, ORDER,
              BLOCK_S, BLOCK_L, PRECISION)
        p_x += scratch_stride
    # 2. dX <- dY (float32 working copy, updated in place by every step)
    _copy(p_gy + off, p_dx, S, L, stride_s, stride_l, BLOCK_S, BLOCK_L)
    tl.debug_barrier()
    # 3. back through the steps N-1 .. 0
    for _ in range(0, n_iters):
        _bwd_step(p_x, p_dx, S, L, stride_s, stride_l, c0, c1, c2, c3, c4, ORDER, BLOCK_S, BLOCK_L, PRECISION)
        p_x -= scratch_stride
