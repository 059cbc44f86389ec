"""Tiled Björck kernels for matrices too large for one program.

One kernel, a batched tiled matmul with an epilogue, ``C = alpha (A @ B) + beta D``, on
arbitrary strides (a transpose is a strided view, never a copy). One order-1 step of the
wide view X (S x L, S <= L) is two launches:

    G = X X^T                                   (Gram on the smaller side)
    X <- c1 (G @ X) + c0 X                      (the update fused into the matmul epilogue)

Higher orders form ``N = sum_{i>=1} c_i G^i`` by Horner on S x S matrices
(``H <- G H + c_i G``, each a matmul with epilogue) and end with ``X <- N @ X + c0 X``.

The backward recomputes the iterates into a transient scratch list (the op saves only W)
and walks the steps back with the same vector-Jacobian product as the fused kernel:
``dP = dY X^T``, reverse Horner for dG, ``dX = P^T dY + (dG + dG^T) X``.

Precision: float32 operands, float32 accumulation, ``input_precision`` explicit ("ieee" by
default; "tf32" trades the last digits for tensor-core speed).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import launch

__all__ = ["mm", "bjorck_tiled_forward", "bjorck_tiled_backward"]


@triton.jit
def _mm_kernel(p_a, p_b, p_d, p_c, M, N, K, sa_b, sa_m, sa_k, sb_b, sb_k, sb_n, sd_b, sd_m, sd_n,
               sc_b, sc_m, sc_n, alpha, beta, HAS_D: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    i_mn = tl.program_id(0)
    i_b = tl.program_id(1).to(tl.int64)
    n_blocks_n = tl.cdiv(N, BLOCK_N)
    i_m = i_mn // n_blocks_n
    i_n = i_mn % n_blocks_n
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_m = o_m < M
    m_n = o_n < N
    p_a = p_a + i_b * sa_b
    p_b = p_b + i_b * sb_b
    b_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)
        m_k = o_k < K
        b_a = tl.load(p_a + o_m[:, None] * sa_m + o_k[None, :] * sa_k, mask=m_m[:, None] & m_k[None, :],
                      other=0.0).to(tl.float32)
        b_b = tl.load(p_b + o_k[:, None] * sb_k + o_n[None, :] * sb_n, mask=m_k[:, None] & m_n[None, :],
                      other=0.0).to(tl.float32)
        b_acc = tl.dot(b_a, b_b, b_acc, input_precision=PRECISION)
    m_c = m_m[:, None] & m_n[None, :]
    b_c = alpha * b_acc
    if HAS_D:  # epilogue: the Björck update c0 X (or a Horner term) added in registers
        p_d = p_d + i_b * sd_b
        b_d = tl.load(p_d + o_m[:, None] * sd_m + o_n[None, :] * sd_n, mask=m_c, other=0.0)
        b_c += beta * b_d.to(tl.float32)
    p_c = p_c + i_b * sc_b
    tl.store(p_c + o_m[:, None] * sc_m + o_n[None, :] * sc_n, b_c, mask=m_c)


def mm(a: torch.Tensor, b: torch.Tensor, *, alpha: float = 1.0, d: torch.Tensor | None = None,
       beta: float = 0.0, out: torch.Tensor | None = None, precision: str = "ieee") -> torch.Tensor:
    """Batched ``alpha (a @ b) + beta d`` in float32 on any strides (3-D tensors (B, ., .)).

    ``out`` (float32, any strides, not aliasing a or b) is written when given.
    """
    nb, m, k = a.shape
    n = b.shape[2]
    if out is None:
        out = torch.empty((nb, m, n), device=a.device, dtype=torch.float32)
    dd = d if d is not None else out
    block_m = max(16, min(64, triton.next_power_of_2(m)))
    block_n = max(16, min(64, triton.next_power_of_2(n)))
    block_k = max(16, min(32, triton.next_power_of_2(k)))
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n), nb)
    launch(_mm_kernel)[grid](
        a, b, dd, out, m, n, k, *a.stride(), *b.stride(), *dd.stride(), *out.stride(),
        float(alpha), float(beta), HAS_D=d is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION=precision, num_warps=4, num_stages=3)
    return out


def _wide(x: torch.Tensor) -> torch.Tensor:
    """The wide view (S <= L) of a batch of matrices: the transpose of a tall or square one."""
    return x if x.shape[-2] < x.shape[-1] else x.mT


def _step(x: torch.Tensor, coeffs: tuple[float, ...], out: torch.Tensor, precision: str) -> torch.Tensor:
    """One Björck step of the wide view x into out: X <- c0 X + N X, N = sum_{i>=1} c_i G^i."""
    g = mm(x, x.mT, precision=precision)
    if len(coeffs) == 2:
        return mm(g, x, alpha=coeffs[1], d=x, beta=coeffs[0], out=out, precision=precision)
    h = mm(g, g, alpha=coeffs[-1], d=g, beta=coeffs[-2], precision=precision)
    for c in reversed(coeffs[1:-2]):
        h = mm(g, h, d=g, beta=c, precision=precision)
    return mm(h, x, d=x, beta=coeffs[0], out=out, precision=precision)


def bjorck_tiled_forward(w: torch.Tensor, n_iters: int, coeffs: tuple[float, ...], *,
                         precision: str = "ieee") -> torch.Tensor:
    """``n_iters`` Björck steps of a batch (B, m, n) with tiled kernels; returns float32 (B, m, n)."""
    out = torch.empty(w.shape, device=w.device, dtype=torch.float32)
    x = _wide(w)
    for t in range(n_iters):
        dst = _wide(out) if t == n_iters - 1 else torch.empty(x.shape, device=w.device, dtype=torch.float32)
        x = _step(x, coeffs, dst, precision)
    return out


def bjorck_tiled_backward(w: torch.Tensor, grad: torch.Tensor, n_iters: int, coeffs: tuple[float, ...], *,
                          precision: str = "ieee") -> torch.Tensor:
    """Gradient w.r.t. w (B, m, n) of the tiled Björck forward, given ``grad`` of its output."""
    xs = [_wide(w)]
    for _ in range(n_iters - 1):  # transient scratch: the iterates X_0 .. X_{N-1}
        xs.append(_step(xs[-1], coeffs, torch.empty(xs[-1].shape, device=w.device, dtype=torch.float32),
                        precision))
    dx_full = torch.empty(w.shape, device=w.device, dtype=torch.float32)
    order = len(coeffs) - 1
    dy = _wide(grad)
    s = xs[0].shape[-2]
    eye = torch.eye(s, device=w.device, dtype=torch.float32).expand(w.shape[0], s, s)
    for t in range(n_iters - 1, -1, -1):
        x = xs[t]
        g = mm(x, x.mT, precision=precision)
        dp = mm(dy, x.mT, precision=precision)
        # reverse Horner (P_k = G P_{k+1} + c_k I): dG = sum_k (G^T)^k dP P_{k+1}^T, accumulated
        # from k = order-1 down to 0 while the forward Horner produces P_{k+1}
        dg = dp * coeffs[order]
        p = None  # P_order = c_order I, kept implicit
        for k in range(order - 2, -1, -1):
            c = coeffs[k + 1]
            p = g * coeffs[order] + eye * c if p is None else mm(g, p, d=eye, beta=c, precision=precision)
            dg = mm(g.mT, dg, precision=precision)
            dg = mm(dp, p.mT, d=dg, beta=1.0, precision=precision)
        gs = dg + dg.mT
        dst = _wide(dx_full) if t == 0 else torch.empty(x.shape, device=w.device, dtype=torch.float32)
        if p is None:  # order 1: P_0^T dY = c1 G^T dY + c0 dY in one epilogue
            tmp = mm(g.mT, dy, alpha=coeffs[1], d=dy, beta=coeffs[0], precision=precision)
        else:
            tmp = mm(mm(g, p, d=eye, beta=coeffs[0], precision=precision).mT, dy, precision=precision)
        dy = mm(gs, x, d=tmp, beta=1.0, out=dst, precision=precision)
    return dx_full
