"""Björck in Gram space: kernels and launchers.

Every matrix is seen in its wide orientation ``X`` (S x L, S <= L). One chunk of ``steps``
Björck steps is

    G0 = X X^T                                  (tiled matmul, bjorck_tiled.mm)
    P_0 = I,  G_t = sym(P_t G0 P_t^T),  P_{t+1} = q(G_t) P_t      (S x S only)
    X <- P X                                    (tiled matmul)

with ``q(g) = sum_i c_i g^i`` (Horner). A chunk ends by forming the iterate and taking a new
Gram: ``P`` grows by up to 1.5 per step along small singular values (order 1), and with it its
float32 rounding, so the chunk length (``restart``) bounds the error (see ops/bjorck_gram.py).

The S x S steps of a matrix run in one program (``_gram_steps_*_kernel``) when S is at most
:data:`STEPS_FUSED_MAX` (every operand in registers; one program per matrix of the batch),
and as a sequence of tiled matmuls otherwise (an S x S product of S >= 128 fills the device).

Backward of a chunk (upstream ``dY`` of ``Y = P X``):

    dP = dY X^T,   dG0 = VJP of the S x S steps,   dX = P^T dY + (dG0 + dG0^T) X

and the VJP of the steps walks them back (the ``P_t`` recomputed into a transient scratch):
``dq = dP_{t+1} P_t^T``, ``dP_t = q^T dP_{t+1}``, ``dG = sum_k G^k dq Q_{k+1}^T`` (reverse
Horner, ``Q_k = sum_{i>=k} c_i G^(i-k)``), ``dGs = (dG + dG^T) / 2``,
``dP_t += dGs P_t (G0 + G0^T)``, ``dG0 += P_t^T dGs P_t``.

Precision: float32 operands and accumulation, ``input_precision`` explicit ("ieee" default).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from liptriton.kernels._helpers import coeffs5, launch
from liptriton.kernels.bjorck_fused import _coef
from liptriton.kernels.bjorck_tiled import mm

__all__ = [
    "STEPS_FUSED_MAX",
    "bjorck_gram_backward",
    "bjorck_gram_forward",
    "gram_steps_backward",
    "gram_steps_forward",
]

#: Largest S whose S x S steps run in one program per matrix.
STEPS_FUSED_MAX = 64


@triton.jit
def _eye(S, BLOCK_S: tl.constexpr):
    """The identity on the S valid rows, zero on the padding (padded blocks then stay zero)."""
    o_s = tl.arange(0, BLOCK_S)
    return ((o_s[:, None] == o_s[None, :]) & (o_s < S)[:, None]).to(tl.float32)


@triton.jit
def _poly(b_g, b_eye, K: tl.constexpr, FIRST: tl.constexpr, c0, c1, c2, c3, c4, PRECISION: tl.constexpr):
    """Q_FIRST = sum_{i >= FIRST} c_i G^(i - FIRST) by Horner."""
    b_q = b_eye * _coef(K, c0, c1, c2, c3, c4)
    for i in tl.static_range(K - 1, FIRST - 1, -1):
        b_q = tl.dot(b_g, b_q, input_precision=PRECISION) + b_eye * _coef(i, c0, c1, c2, c3, c4)
    return b_q


@triton.jit
def _gram_at(b_p, b_g0, PRECISION: tl.constexpr):
    """sym(P G0 P^T): the Gram of the iterate P X0, kept symmetric against rounding."""
    b_g = tl.dot(tl.dot(b_p, b_g0, input_precision=PRECISION), tl.trans(b_p), input_precision=PRECISION)
    return 0.5 * (b_g + tl.trans(b_g))


@triton.jit
def _gram_steps_fwd_kernel(p_g0, p_p, S, n_steps, c0, c1, c2, c3, c4, ORDER: tl.constexpr,
                           BLOCK_S: tl.constexpr, PRECISION: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    o_s = tl.arange(0, BLOCK_S)
    m_ss = (o_s < S)[:, None] & (o_s < S)[None, :]
    o_ss = i_b * S * S + o_s[:, None] * S + o_s[None, :]
    b_g0 = tl.load(p_g0 + o_ss, mask=m_ss, other=0.0).to(tl.float32)
    b_eye = _eye(S, BLOCK_S)
    b_p = b_eye
    for _ in range(n_steps):
        b_g = _gram_at(b_p, b_g0, PRECISION)
        b_q = _poly(b_g, b_eye, ORDER, 0, c0, c1, c2, c3, c4, PRECISION)
        b_p = tl.dot(b_q, b_p, input_precision=PRECISION)
    tl.store(p_p + o_ss, b_p, mask=m_ss)


@triton.jit
def _gram_steps_bwd_kernel(p_g0, p_dp, p_dg0, p_scratch, S, n_steps, scratch_stride, c0, c1, c2, c3, c4,
                           ORDER: tl.constexpr, BLOCK_S: tl.constexpr, PRECISION: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    o_s = tl.arange(0, BLOCK_S)
    m_ss = (o_s < S)[:, None] & (o_s < S)[None, :]
    o_ss = i_b * S * S + o_s[:, None] * S + o_s[None, :]
    b_g0 = tl.load(p_g0 + o_ss, mask=m_ss, other=0.0).to(tl.float32)
    b_g0s = b_g0 + tl.trans(b_g0)
    b_eye = _eye(S, BLOCK_S)
    # 1. recompute P_0 .. P_{n-1} into the scratch (slot t at p_scratch + t * scratch_stride)
    p_slot = p_scratch + o_ss
    b_p = b_eye
    for _ in range(n_steps):
        tl.store(p_slot, b_p, mask=m_ss)
        b_g = _gram_at(b_p, b_g0, PRECISION)
        b_p = tl.dot(_poly(b_g, b_eye, ORDER, 0, c0, c1, c2, c3, c4, PRECISION), b_p, input_precision=PRECISION)
        p_slot += scratch_stride
    tl.debug_barrier()  # the slots are written before any thread reads them back
    # 2. walk the steps back
    b_dp = tl.load(p_dp + o_ss, mask=m_ss, other=0.0).to(tl.float32)
    b_dg0 = tl.zeros((BLOCK_S, BLOCK_S), dtype=tl.float32)
    for _ in range(n_steps):
        p_slot -= scratch_stride
        b_p = tl.load(p_slot, mask=m_ss, other=0.0, cache_modifier=".cg")
        b_g = _gram_at(b_p, b_g0, PRECISION)
        b_dq = tl.dot(b_dp, tl.trans(b_p), input_precision=PRECISION)
        b_dp = tl.dot(tl.trans(_poly(b_g, b_eye, ORDER, 0, c0, c1, c2, c3, c4, PRECISION)), b_dp,
                      input_precision=PRECISION)
        # reverse Horner: dG = sum_{k < ORDER} G^k dq Q_{k+1}^T (G symmetric)
        b_dk = b_dq
        b_dg = tl.dot(b_dk, tl.trans(_poly(b_g, b_eye, ORDER, 1, c0, c1, c2, c3, c4, PRECISION)),
                      input_precision=PRECISION)
        for k in tl.static_range(1, ORDER):
            b_dk = tl.dot(b_g, b_dk, input_precision=PRECISION)
            b_dg = tl.dot(b_dk, tl.trans(_poly(b_g, b_eye, ORDER, k + 1, c0, c1, c2, c3, c4, PRECISION)),
                          b_dg, input_precision=PRECISION)
        b_dgs = 0.5 * (b_dg + tl.trans(b_dg))
        b_dgs_p = tl.dot(b_dgs, b_p, input_precision=PRECISION)
        b_dp = tl.dot(b_dgs_p, b_g0s, b_dp, input_precision=PRECISION)
        b_dg0 = tl.dot(tl.trans(b_p), b_dgs_p, b_dg0, input_precision=PRECISION)
    tl.store(p_dg0 + o_ss, b_dg0, mask=m_ss)


def _launch_args(s: int, coeffs: tuple[float, ...]) -> dict:
    block_s = max(16, triton.next_power_of_2(s))
    return {"ORDER": len(coeffs) - 1, "BLOCK_S": block_s, "num_warps": 4 if block_s <= 32 else 8}


def _poly_tiled(g: torch.Tensor, coeffs: tuple[float, ...], first: int, eye: torch.Tensor,
                precision: str) -> torch.Tensor:
    q = eye * coeffs[-1]
    for c in reversed(coeffs[first:-1]):
        q = mm(g, q, d=eye, beta=c, precision=precision)
    return q


def _gram_at_tiled(p: torch.Tensor, g0: torch.Tensor, precision: str) -> torch.Tensor:
    g = mm(mm(p, g0, precision=precision), p.mT, precision=precision)
    return 0.5 * (g + g.mT)


def gram_steps_forward(g0: torch.Tensor, n_steps: int, coeffs: tuple[float, ...], *,
                       precision: str = "ieee") -> torch.Tensor:
    """``P`` after ``n_steps`` Gram-space steps from ``G0`` (B, S, S); returns float32 (B, S, S)."""
    g0 = g0.contiguous()
    b, s, _ = g0.shape
    if s <= STEPS_FUSED_MAX:
        p = torch.empty((b, s, s), device=g0.device, dtype=torch.float32)
        launch(_gram_steps_fwd_kernel)[(b,)](g0, p, s, int(n_steps), *coeffs5(coeffs, "bjorck_gram kernels"),
                                                  PRECISION=precision, **_launch_args(s, coeffs))
        return p
    eye = torch.eye(s, device=g0.device, dtype=torch.float32).expand(b, s, s)
    p = eye
    for _ in range(n_steps):
        p = mm(_poly_tiled(_gram_at_tiled(p, g0, precision), coeffs, 0, eye, precision), p, precision=precision)
    return p


def gram_steps_backward(g0: torch.Tensor, dp: torch.Tensor, n_steps: int, coeffs: tuple[float, ...], *,
                        precision: str = "ieee") -> torch.Tensor:
    """Gradient w.r.t. ``G0`` of :func:`gram_steps_forward`, given ``dp`` of its output (B, S, S)."""
    g0, dp = g0.contiguous(), dp.contiguous()
    b, s, _ = g0.shape
    if s <= STEPS_FUSED_MAX:
        dg0 = torch.empty((b, s, s), device=g0.device, dtype=torch.float32)
        scratch = torch.empty((n_steps, b, s, s), device=g0.device, dtype=torch.float32)
        launch(_gram_steps_bwd_kernel)[(b,)](g0, dp, dg0, scratch, s, int(n_steps), b * s * s,
                                                  *coeffs5(coeffs, "bjorck_gram kernels"), PRECISION=precision,
                                                  **_launch_args(s, coeffs))
        return dg0
    eye = torch.eye(s, device=g0.device, dtype=torch.float32).expand(b, s, s)
    ps = [eye]
    for _ in range(n_steps - 1):
        ps.append(mm(_poly_tiled(_gram_at_tiled(ps[-1], g0, precision), coeffs, 0, eye, precision), ps[-1],
                     precision=precision))
    g0s = g0 + g0.mT
    dg0 = torch.zeros((b, s, s), device=g0.device, dtype=torch.float32)
    for p in reversed(ps):
        g = _gram_at_tiled(p, g0, precision)
        dq = mm(dp, p.mT, precision=precision)
        dp = mm(_poly_tiled(g, coeffs, 0, eye, precision).mT, dp, precision=precision)
        dk = dq
        dg = mm(dk, _poly_tiled(g, coeffs, 1, eye, precision).mT, precision=precision)
        for k in range(1, len(coeffs) - 1):
            dk = mm(g, dk, precision=precision)
            dg = mm(dk, _poly_tiled(g, coeffs, k + 1, eye, precision).mT, d=dg, beta=1.0, precision=precision)
        dgs_p = mm(0.5 * (dg + dg.mT), p, precision=precision)
        dp = mm(dgs_p, g0s, d=dp, beta=1.0, precision=precision)
        dg0 = mm(p.mT, dgs_p, d=dg0, beta=1.0, precision=precision)
    return dg0


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[-2] <= x.shape[-1] else x.mT


def _chunks(n_iters: int, restart: int) -> list[int]:
    if n_iters < 1 or restart < 1:
        raise ValueError(f"bjorck_gram kernels: n_iters and restart must be >= 1, got {n_iters}, {restart}")
    return [min(restart, n_iters - done) for done in range(0, n_iters, restart)]


def bjorck_gram_forward(w: torch.Tensor, n_iters: int, coeffs: tuple[float, ...], restart: int, *,
                        precision: str = "ieee") -> torch.Tensor:
    """``n_iters`` Björck steps of each matrix of ``w`` (B, m, n) in Gram space; float32 (B, m, n)."""
    if w.dim() != 3 or not w.is_floating_point():
        raise ValueError(f"bjorck_gram kernels: expected a floating (B, m, n) tensor, got {w.dtype} "
                         f"{tuple(w.shape)}")
    out = torch.empty(w.shape, device=w.device, dtype=torch.float32)
    x = _wide(w)
    chunks = _chunks(n_iters, restart)
    for i, steps in enumerate(chunks):
        p = gram_steps_forward(mm(x, x.mT, precision=precision), steps, coeffs, precision=precision)
        dst = _wide(out) if i == len(chunks) - 1 else None
        x = mm(p, x, out=dst, precision=precision)
    return out


def bjorck_gram_backward(w: torch.Tensor, grad: torch.Tensor, n_iters: int, coeffs: tuple[float, ...],
                         restart: int, *, precision: str = "ieee") -> torch.Tensor:
    """Gradient w.r.t. ``w`` (B, m, n) of :func:`bjorck_gram_forward`, given ``grad`` of its output."""
    chunks = _chunks(n_iters, restart)
    saved, x = [], _wide(w)  # per chunk: its input, G0 and P (recomputed: the op saves only w)
    for steps in chunks:
        g0 = mm(x, x.mT, precision=precision)
        p = gram_steps_forward(g0, steps, coeffs, precision=precision)
        saved.append((x, g0, p))
        x = mm(p, x, precision=precision)
    dx_full = torch.empty(w.shape, device=w.device, dtype=torch.float32)
    dy = _wide(grad)
    for i in range(len(chunks) - 1, -1, -1):
        x, g0, p = saved[i]
        dg0 = gram_steps_backward(g0, mm(dy, x.mT, precision=precision), chunks[i], coeffs, precision=precision)
        tmp = mm(p.mT, dy, precision=precision)
        dy = mm(dg0 + dg0.mT, x, d=tmp, beta=1.0, out=_wide(dx_full) if i == 0 else None, precision=precision)
    return dx_full
