"""The frequency blocks of a convolution operator: matrices whose largest singular value is a
guaranteed upper bound of the operator's l2 norm at an input size, differentiable in the weight.

With zero padding, the (strided, dilated) convolution on an input of size ``n`` is a compression
``P C E`` of the circular convolution ``C`` on a grid ``N >= n + padding`` (``E`` embeds the
padded input, ``P`` keeps the outputs that never wrap), so ``||A|| <= ||C||``. Splitting the
input into ``prod(stride)`` phases makes ``C`` a stride-1 circular convolution on the
``N / stride`` grid, whose singular values are those of the per-frequency matrices
``K(w) = sum_t W_t exp(-i <w, j(t)>)`` (Sedghi et al., 2019). A real kernel has
``K(-w) = conj K(w)``, so half of the frequencies suffice, and each complex ``K`` is carried as
the real matrix ``[[Re K, -Im K], [Im K, Re K]]`` (same singular values, each twice): the blocks
are one real matmul of the weight with a cosine/sine table, no FFT and no complex dtype in
autograd. Only their Gram matrices, which the certificate factors under ``no_grad``, are complex
(half the side of the real embedding).

Circular padding of the kernel's extent with a stride that divides ``n`` *is* that circular
convolution (the bound is exact). Other copying padding modes (reflect, replicate, symmetric)
multiply the bound by the norm of their gather, ``sqrt(max copies of one input element)``.
A transposed convolution is the adjoint of the convolution with the same weight on its output
size. Measured excess over the true norm (random 3x3 kernels): +2 to +4% at 8 x 8, +0.6% at
14 x 14, +0.2 to +0.3% at 16 x 16 and 28 x 28.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from liptriton.bounds.conv_gram import fourier_gram
from liptriton.bounds.conv_operator import ConvSpec, _pad_index

__all__ = ["FourierPlan", "fourier_blocks", "fourier_gram", "fourier_plan"]


@dataclass(frozen=True)
class FourierPlan:
    """How a convolution weight becomes frequency blocks (see :func:`fourier_plan`).

    Attributes:
        groups: convolution groups.
        phases: number of polyphase components that some tap lands in (at most ``prod(stride)``).
        grid: the circular grid after the polyphase split, per dimension.
        gather: norm of the padding gather (1 for zero padding).
        exact: True when the bound equals the operator norm (circular padding).
        wide: True when the blocks are transposed so that ``B^T B`` is on the smaller side.
        size: side of the square matrices ``B^T B``.
        table: (2, F * phases, T) float64 cos/sin of each tap's phase per frequency, zero for the
            phases a tap does not belong to.
        pairs: (C, T * T) float64: which class (lag, and for the input side the block) each tap
            pair (t, t') adds to, for :func:`fourier_gram`.
        place: (C,) where each class goes in the dense lag grid (flattened ``(L_1, ..., L_nd)``,
            times ``(phases, phases)`` on the input side).
        lag_shape: ``L_i``, the number of lags per dimension (a contiguous range each).
        dfts: per dimension, the complex128 table ``exp(+-i 2 pi f l / grid)`` (F_i, L_i) that
            :func:`fourier_gram` contracts that dimension's lags with.
    """

    groups: int
    phases: int
    grid: tuple[int, ...]
    gather: float
    exact: bool
    wide: bool
    size: int
    table: Tensor
    pairs: Tensor
    place: Tensor
    lag_shape: tuple[int, ...]
    dfts: tuple[Tensor, ...]

    @property
    def frequencies(self) -> int:
        """Number of frequency blocks per group (half of the spectrum)."""
        return math.prod(self.grid[:-1]) * (self.grid[-1] // 2 + 1)


def fourier_plan(spec: ConvSpec, weight_shape: tuple[int, ...], input_size: tuple[int, ...],
                 device: torch.device | None = None) -> FourierPlan:
    """Plan the frequency blocks of the operator ``spec`` with a weight of ``weight_shape`` at
    ``input_size`` (spatial).

    Args:
        spec: the operator geometry.
        weight_shape: the layer's weight shape.
        input_size: spatial size of the layer's input.
        device: where the tables live.

    Returns:
        A :class:`FourierPlan`.

    Examples:
        >>> conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        >>> plan = fourier_plan(ConvSpec.from_module(conv), conv.weight.shape, (8, 8))
        >>> plan.grid, plan.frequencies
        ((10, 10), 60)
    """
    nd = spec.ndim
    input_size = tuple(int(n) for n in input_size)
    kernel = tuple(weight_shape[2:])
    if spec.transposed:  # the adjoint of the convolution with the same weight, on the output size
        input_size = spec.output_shape(torch.empty(weight_shape, device="meta"), input_size)
        spec = replace(spec, transposed=False, output_padding=(0,) * nd, padding_mode="zeros")
    extent = [d * (k - 1) for d, k in zip(spec.dilation, kernel)]
    totals = [b + a for b, a in spec.padding]
    exact = (spec.padding_mode == "circular" and totals == extent
             and all(n % s == 0 for n, s in zip(input_size, spec.stride)))
    gather = 1.0
    if exact:
        grid = input_size
    else:
        if spec.padding_mode != "zeros" and any(totals):
            counts = torch.bincount(_pad_index(spec, input_size, torch.device("cpu")))
            gather = math.sqrt(float(counts.max()))
        grid = tuple(math.ceil((n + t) / s) * s for n, t, s in zip(input_size, totals, spec.stride))
    grid = tuple(g // s for g, s in zip(grid, spec.stride))  # after the polyphase split
    # A dimension along which every tap lands in the same polyphase cell (a 1x1 kernel, or a
    # kernel no wider than the stride) adds no frequency dependence: one frequency suffices.
    grid = tuple(1 if d * (k - 1) < s else g for g, d, k, s in zip(grid, spec.dilation, kernel, spec.stride))
    # Tap t of dimension d reads input s * o + dil * t: phase r = (dil t) mod s, shift (dil t) div s.
    freqs = [torch.arange(g if i < nd - 1 else g // 2 + 1, dtype=torch.float64) for i, g in enumerate(grid)]
    taps = [torch.arange(k, dtype=torch.float64) * d for k, d in zip(kernel, spec.dilation)]
    angle = torch.zeros(1, 1, dtype=torch.float64)
    phase = torch.zeros(1, dtype=torch.long)
    for i in range(nd):
        s = spec.stride[i]
        shift, rem = torch.div(taps[i], s, rounding_mode="floor"), torch.remainder(taps[i], s).long()
        a = 2 * math.pi * freqs[i][:, None] * shift[None, :] / grid[i]  # (F_i, T_i)
        angle = (angle[:, None, :, None] + a[None, :, None, :]).flatten(2).flatten(0, 1)
        phase = (phase[:, None] * s + rem[None, :]).flatten()
    # A phase no tap lands in (a kernel narrower than the stride: a 1x1 stride-2 downsampling) adds
    # zero columns to every block: dropped (same singular values, a smaller Gram matrix).
    used = torch.unique(phase)
    phase = torch.searchsorted(used, phase)
    phases = len(used)
    onehot = torch.nn.functional.one_hot(phase, phases).to(torch.float64).T  # (phases, T)
    table = torch.stack([angle.cos(), -angle.sin()])  # (2, F, T)
    table = (table[:, :, None, :] * onehot[None, None]).flatten(1, 2)  # (2, F * phases, T)
    co, ci = weight_shape[0], weight_shape[1]
    rows, cols = co // spec.groups, ci * phases
    wide = cols > rows
    pairs, place, lag_shape, dfts = _pair_classes(spec, kernel, grid, freqs, wide, used.tolist())
    dev = device or torch.device("cpu")
    return FourierPlan(groups=spec.groups, phases=phases, grid=grid, gather=gather, exact=exact, wide=wide,
                       size=2 * min(rows, cols), table=table.to(dev), pairs=pairs.to(dev), place=place.to(dev),
                       lag_shape=lag_shape, dfts=tuple(d.to(dev) for d in dfts))


def _pair_classes(spec: ConvSpec, kernel: tuple[int, ...], grid: tuple[int, ...], freqs: list[Tensor],
                  wide: bool, used: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Group the tap pairs (t, t') of ``sum_{t,t'} G_tt' exp(i <w, j_t - j_t'>)`` by lag (and, on
    the input side, by the (phase_t, phase_t') block they land in; on the output side only pairs of
    one phase contribute). ``used``: the phases some tap lands in, in order (block numbering)."""
    nd = spec.ndim
    shift, phase = [], []
    for t in itertools.product(*[range(k) for k in kernel]):
        pos = [ti * d for ti, d in zip(t, spec.dilation)]
        shift.append(tuple(p // s for p, s in zip(pos, spec.stride)))
        r = 0
        for p, s in zip(pos, spec.stride):
            r = r * s + p % s
        phase.append(used.index(r))
    phases, n_taps = len(used), len(shift)
    keys: dict[tuple, int] = {}
    members: list[tuple[int, int]] = []
    for t in range(n_taps):
        for u in range(n_taps):
            if wide and phase[t] != phase[u]:
                continue
            lag = tuple(a - b for a, b in zip(shift[t], shift[u]))
            key = (lag,) if wide else (lag, phase[t], phase[u])
            members.append((keys.setdefault(key, len(keys)), t * n_taps + u))
    pairs = torch.zeros(len(keys), n_taps * n_taps, dtype=torch.float64)
    for c, pu in members:
        pairs[c, pu] = 1.0
    lag = torch.tensor([key[0] for key in keys], dtype=torch.long).reshape(len(keys), nd)
    low = lag.amin(0)
    lag_shape = tuple(int(n) for n in lag.amax(0) - low + 1)
    place = torch.zeros(len(keys), dtype=torch.long)
    for i in range(nd):
        place = place * lag_shape[i] + (lag[:, i] - low[i])
    if not wide:  # and the (phase_t, phase_t') block
        pt = torch.tensor([key[1] for key in keys], dtype=torch.long)
        pu = torch.tensor([key[2] for key in keys], dtype=torch.long)
        place = (place * phases + pt) * phases + pu
    sign = -1.0 if wide else 1.0  # K K^H sums exp(-i <w, lag>), K^H K exp(+i <w, lag>)
    dfts = []
    for i in range(nd):
        lags = torch.arange(lag_shape[i], dtype=torch.float64) + float(low[i])
        angle = 2 * math.pi * freqs[i][:, None] * lags[None, :] / grid[i]  # (F_i, L_i)
        dfts.append(torch.polar(torch.ones_like(angle), sign * angle))
    return pairs, place, lag_shape, dfts


def _complex_blocks(plan: FourierPlan, weight: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of ``K(w)``, each (groups * F, rows, cols), or only block ``index``
    of that flattened batch (a 0-d tensor: no host synchronization)."""
    co, ci = weight.shape[:2]
    g, phases = plan.groups, plan.phases
    table = plan.table.to(weight.dtype)
    group = None
    if index is not None:  # one frequency of one group: its rows of the table
        freqs = plan.frequencies
        group, freq = torch.div(index, freqs, rounding_mode="floor"), torch.remainder(index, freqs)
        table = table.index_select(1, freq * phases + torch.arange(phases, device=table.device))
    # (2, F * phases, T) x (co * ci, T) -> (2, co, ci, F, phases)
    k = torch.matmul(weight.reshape(co * ci, -1), table.mT).reshape(2, co, ci, -1, phases)
    k = k.reshape(2, g, co // g, ci, -1, phases).permute(0, 1, 4, 2, 3, 5).flatten(-2)  # (2, G, F, r, c)
    if group is not None:
        k = k.index_select(1, group.reshape(1))
    return k[0].flatten(0, 1), k[1].flatten(0, 1)


def fourier_blocks(plan: FourierPlan, weight: Tensor, index: Tensor | None = None) -> Tensor:
    """Return the real frequency blocks ``B`` (groups * F, p, q) of the operator, differentiable.

    ``max sigma_max(B) * plan.gather`` is a guaranteed upper bound of the operator norm at the
    plan's input size; ``B^T B`` is on the smaller side (q = ``plan.size``).

    Args:
        plan: from :func:`fourier_plan`.
        weight: the convolution weight (any float dtype; the table is cast to it).
        index: optional 0-d tensor: return only that block (shape (1, p, q)).

    Returns:
        The blocks, in ``weight``'s dtype.
    """
    re, im = _complex_blocks(plan, weight, index)
    real = torch.cat([torch.cat([re, -im], -1), torch.cat([im, re], -1)], -2)
    return real.mT if plan.wide else real
