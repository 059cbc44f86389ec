"""The Gram matrices of a convolution's frequency blocks (:func:`fourier_gram`), what the
certificate factors: complex Hermitian, float64 for a certificate, under ``no_grad``.

A compiled CPU graph calls them as one opaque op (``liptriton::fourier_gram``), as it calls the
certificate itself: traced, the complex GEMMs fall back to eager kernels anyway, and Inductor's
buffers around them raised network (a)'s compiled peak memory from 30.4 to 39.3 MB (perf/NOTES.md).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from liptriton.bounds.conv_fourier import FourierPlan

__all__ = ["fourier_gram"]


def fourier_gram(plan: FourierPlan, weight: Tensor) -> Tensor:
    """Return the complex Hermitian Gram matrices ``K^H K`` (or ``K K^H``) of the frequency
    blocks, as large GEMMs: the real blocks ``B`` of
    :func:`~liptriton.bounds.conv_fourier.fourier_blocks` are their real embedding,
    ``B^T B = [[Re H, -Im H], [Im H, Re H]]`` (same eigenvalues, each twice; the eigenvector
    ``[x; y]`` of the embedding is ``x + i y``), at half the side.

    ``K^H K = sum_{t,t'} W_t^T W_t' exp(i <w, j_t - j_t'>)``: the Gram of every tap pair (one
    GEMM), summed per lag (a second), then the lags' discrete Fourier transform one dimension at
    a time (a complex GEMM per dimension against that dimension's lag range, 5 lags for a 3 x 3
    kernel), which writes every frequency's complex block at once. Output side (``K K^H``) alike,
    with the pairs of one phase. Measured against one real GEMM per part over every (lag,
    frequency) pair plus the complex interleave (one thread): 480 blocks of side 32 (a 32 -> 32
    conv at 28 x 28) 4.1 -> 1.6 ms; 180 of side 64 5.5 -> 4.3 ms; 60 of side 32 and of side 128
    equal (the tap pairs' Gram dominates).

    Args:
        plan: from :func:`~liptriton.bounds.conv_fourier.fourier_plan`.
        weight: the convolution weight (float64 for a certificate: the result is complex128).

    Returns:
        Hermitian positive semi-definite matrices (groups * F, plan.size // 2, plan.size // 2).

    Examples:
        >>> from liptriton.bounds.conv_fourier import fourier_plan
        >>> from liptriton.bounds.conv_operator import ConvSpec
        >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        >>> plan = fourier_plan(ConvSpec.from_module(conv), conv.weight.shape, (8, 8))
        >>> fourier_gram(plan, conv.weight.detach().double()).shape
        torch.Size([60, 2, 2])
    """
    args = (weight, plan.pairs, plan.place, list(plan.dfts), list(plan.lag_shape), plan.groups, plan.phases,
            plan.wide)
    if weight.device.type == "cpu" and torch.compiler.is_compiling():
        return torch.ops.liptriton.fourier_gram(*args)
    return _gram(*args)


def _gram(weight: Tensor, pairs: Tensor, place: Tensor, dfts: list[Tensor], lag_shape: list[int], g: int,
          phases: int, wide: bool) -> Tensor:
    co, ci = weight.shape[:2]
    wt = weight.reshape(g, co // g, ci, -1)
    taps = wt.shape[-1]
    if wide:  # output side: sum_c W[:, c, t] W[:, c, t']^T
        side = co // g
        a = wt.permute(0, 3, 1, 2).reshape(g, taps * side, ci)
    else:  # input side: sum_o W[o, :, t]^T W[o, :, t']
        side = ci
        a = wt.permute(0, 3, 2, 1).reshape(g, taps * side, co // g)
    cls = _lag_grams(a.reshape(g, taps, side, -1), pairs.to(weight.dtype))  # (G, C, side^2)
    cls = cls.to(torch.promote_types(weight.dtype, torch.complex64))
    cells = math.prod(lag_shape) * (1 if wide else phases * phases)
    dense = cls.new_zeros(g, cells, side * side).index_copy_(1, place, cls)
    if not wide:  # rows and columns ordered (channel, phase)
        dense = (dense.reshape(g, -1, phases, phases, ci, ci).permute(0, 1, 4, 2, 5, 3)
                 .reshape(g, cells // (phases * phases), -1))
    # one dimension's lags at a time, the last first: (G, L_1..L_i, F_i+1..F_nd, R) -> (.., F_i, ..)
    x, done = dense, 1
    for i in reversed(range(len(lag_shape))):
        dft = dfts[i].to(x.dtype)
        x = torch.matmul(dft, x.reshape(-1, lag_shape[i], done * side * side * (1 if wide else phases**2)))
        done *= dft.shape[0]
    n = side * (1 if wide else phases)
    return x.reshape(-1, n, n)


@torch.library.custom_op("liptriton::fourier_gram", mutates_args=(), device_types="cpu")
def _gram_op(weight: Tensor, pairs: Tensor, place: Tensor, dfts: list[Tensor], lag_shape: list[int], groups: int,
             phases: int, wide: bool) -> Tensor:
    """:func:`fourier_gram` as one CPU op for compiled graphs (runs eagerly inside)."""
    return _gram(weight, pairs, place, dfts, lag_shape, groups, phases, wide).contiguous()


@_gram_op.register_fake
def _(weight: Tensor, pairs: Tensor, place: Tensor, dfts: list[Tensor], lag_shape: list[int], groups: int,
      phases: int, wide: bool) -> Tensor:
    n = (weight.shape[0] // groups) if wide else weight.shape[1] * phases
    freqs = math.prod(d.shape[0] for d in dfts)
    return weight.new_empty((groups * freqs, n, n), dtype=torch.promote_types(weight.dtype, torch.complex64))


# Work ((taps * side)^2 * n) up to which the tap pairs' Gram is one GEMM: network (c)'s 32 -> 32
# conv at 8 x 8 (9 taps, side 32): fourier_gram in 50 ops instead of 171, its certificate (forward
# + backward, one thread) 5.6-6.0 -> 5.35-5.6 ms.
_ONE_GEMM_WORK = 2**24


def _lag_grams(a: Tensor, pairs: Tensor) -> Tensor:
    """``sum`` over the tap pairs of each class of ``a_t a_u^T``, from the pairs ``t <= u`` only
    (``a_u a_t^T`` is the transpose): half the flops of the Gram of every pair. A small one takes
    the Gram of every pair in one GEMM instead (fewer ops).

    Args:
        a: (G, T, side, n) per-tap matrices.
        pairs: (C, T * T) membership of pair ``(t, u)`` (column ``t T + u``) in each class.

    Returns:
        (G, C, side * side).
    """
    g, taps, side, n = a.shape
    if (taps * side) ** 2 * n <= _ONE_GEMM_WORK:  # small: every pair in one GEMM (fewer ops, not flops)
        full = torch.bmm(a.reshape(g, taps * side, n), a.reshape(g, taps * side, n).mT)
        full = full.reshape(g, taps, side, taps, side).permute(0, 1, 3, 2, 4).reshape(g, taps * taps, side * side)
        return pairs @ full
    upper = torch.cat([(a[:, t] @ a[:, t:].reshape(g, -1, a.shape[-1]).mT).reshape(g, side, taps - t, side)
                       .permute(0, 2, 1, 3) for t in range(taps)], 1)  # (G, P, side, side): pairs t <= u
    t, u = torch.triu_indices(taps, taps, device=pairs.device)
    by_pair = pairs.reshape(-1, taps, taps)
    direct = by_pair[:, t, u]  # (C, P): class of (t, u)
    mirror = by_pair[:, u, t] * (t != u).to(pairs.dtype)  # class of (u, t), whose block is the transpose
    return direct @ upper.flatten(2) + mirror @ upper.mT.flatten(2)
