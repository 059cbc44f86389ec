"""Guaranteed l2 bounds of pooling operators (no dependency on any module rule).

Schur's test, ``||A||_2 <= sqrt(||A||_1 ||A||_inf)``, exact for non-negative operators with
uniform row and column sums (non-overlapping average pooling), and window overlap counts for
max pooling: ``||maxpool(x) - maxpool(y)||^2 <= sum_windows max_i |x_i - y_i|^2 <= (max windows
per element) ||x - y||^2``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["adaptive_windows_bound", "as_tuple", "avg_pool_nominal", "schur_bound", "window_overlap"]


def as_tuple(v, nd: int) -> tuple[int, ...]:
    """``v`` as an ``nd``-tuple (an int is repeated)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def window_overlap(kernel, stride, dilation, nd: int) -> int:
    """Largest number of pooling windows that contain one input element (on the infinite grid).

    Position ``i`` lies in window ``m`` when ``i = s m + d j`` for some tap ``j < k``: each tap
    gives at most one window, so the count per dimension is the largest number of taps with the
    same ``d j mod s``; windows are products over dimensions.

    Args:
        kernel, stride, dilation: the pooling geometry (ints or ``nd``-tuples; stride None: kernel).
        nd: the number of spatial dimensions.

    Returns:
        The overlap count.

    Examples:
        >>> window_overlap(3, 2, 1, 2)
        4
    """
    total = 1
    for k, s, d in zip(as_tuple(kernel, nd), as_tuple(stride if stride else kernel, nd), as_tuple(dilation, nd)):
        residues = [(d * j) % s for j in range(k)]
        total *= max(residues.count(r) for r in set(residues))
    return total


def adaptive_windows_bound(sizes: tuple[int, ...], outs: tuple[int | None, ...], average: bool) -> float:
    """Norm bound of adaptive pooling from ``sizes`` to ``outs`` (separable, per dimension).

    Average: Schur's test (rows sum to 1, columns to the sum of 1/len over the windows holding
    the element): exact when the windows tile the input. Max: sqrt of the largest overlap count.

    Args:
        sizes: the input's spatial size.
        outs: the output size (None: the input's).
        average: average (True) or max (False) pooling.

    Returns:
        The bound.

    Examples:
        >>> adaptive_windows_bound((4, 4), (1, 1), True)
        0.25
    """
    total = 1.0
    for n, o in zip(sizes, outs):
        o = n if o is None else o
        cols = [0.0] * n
        for i in range(o):
            start, end = (i * n) // o, -((-(i + 1) * n) // o)
            for p in range(start, end):
                cols[p] += 1.0 / (end - start) if average else 1.0
        total *= max(cols)
    return math.sqrt(total)


def avg_pool_nominal(pool: nn.Module, nd: int) -> float:
    """A size-free Schur bound of ``nn.AvgPoolNd``: rows sum to <= 1, a column to at most
    overlap / smallest divisor (the full window unless ceil_mode or padding excluded from it).

    Args:
        pool: the pooling module.
        nd: its number of spatial dimensions.

    Returns:
        The bound.

    Examples:
        >>> avg_pool_nominal(torch.nn.AvgPool2d(2), 2)
        0.5
    """
    k = as_tuple(pool.kernel_size, nd)
    pad = any(p > 0 for p in as_tuple(pool.padding, nd))
    divisor = getattr(pool, "divisor_override", None)
    if divisor is None:
        exclude = pool.ceil_mode or (pad and not pool.count_include_pad)
        divisor = 1 if exclude else math.prod(k)
    overlap = window_overlap(k, pool.stride, 1, nd)
    rows = 1.0 if getattr(pool, "divisor_override", None) is None else math.prod(k) / divisor
    return math.sqrt(rows * overlap / divisor)


def schur_bound(fn: Callable, shape: tuple[int, ...]) -> float:
    """Schur bound ``sqrt(max row sum * max col sum)`` of a non-negative linear map, by autograd.

    Args:
        fn: the map (e.g. an average pooling module).
        shape: its input's shape (batch first; the batch is taken as 1).

    Returns:
        The bound.

    Examples:
        >>> round(schur_bound(torch.nn.AvgPool1d(2), (1, 1, 4)), 4)
        0.7071
    """
    x = torch.ones(1, *shape[1:], dtype=torch.float64, requires_grad=True)
    y = fn(x)
    (cols,) = torch.autograd.grad(y.sum(), x)
    return math.sqrt(float(y.detach().max()) * float(cols.max()))
