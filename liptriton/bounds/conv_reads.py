"""How many times a convolution reads one input element, padding copies included.

``||conv|| <= sqrt(reads) * ||W||_F`` where ``reads`` is the largest number of (output
position, kernel tap) pairs that read one input element, counting the copies that a padding
mode makes ("reflect", "replicate", "circular", "symmetric" pad with copies of input elements;
"zeros" with zeros). Per dimension the count is exact and the multi-dimensional count is the
product of the per-dimension ones (the padded index map is separable); the largest count is
taken over every input size the padding mode allows, so the bound holds at any input size.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["max_reads", "max_reads_1d"]


def _padded_sources(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source index of each padded position (-1: a zero)."""
    i = np.arange(-before, n + after)
    if mode == "zeros":
        return np.where((i >= 0) & (i < n), i, -1)
    if mode == "reflect":  # mirror without the edge element (pad < n)
        i = np.abs(i)
        return np.where(i >= n, 2 * (n - 1) - i, i)
    if mode == "symmetric":  # mirror with the edge element (pad <= n)
        i = np.where(i < 0, -i - 1, i)
        return np.where(i >= n, 2 * n - 1 - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    if mode == "circular":
        return np.mod(i, n)
    raise ValueError(f"max_reads: unknown padding_mode {mode!r}")


def _reads_at(n: int, k: int, s: int, d: int, before: int, after: int, mode: str) -> int:
    src = _padded_sources(n, before, after, mode)
    span = d * (k - 1) + 1
    outputs = (len(src) - span) // s + 1
    if outputs < 1:
        return 0
    pos = (np.arange(outputs)[:, None] * s + np.arange(k)[None, :] * d).ravel()
    read = src[pos]
    read = read[read >= 0]
    return int(np.bincount(read, minlength=n).max()) if read.size else 0


def max_reads_1d(kernel: int, stride: int, dilation: int, padding: tuple[int, int], mode: str) -> int:
    """Largest number of reads of one input element along one dimension, over all input sizes.

    Args:
        kernel: kernel size.
        stride: stride.
        dilation: dilation.
        padding: (before, after).
        mode: "zeros", "reflect", "replicate", "circular" or "symmetric".

    Returns:
        The count (at least 1).

    Examples:
        >>> max_reads_1d(3, 1, 1, (1, 1), "zeros"), max_reads_1d(3, 1, 1, (1, 1), "reflect")
        (3, 5)
    """
    before, after = padding
    smallest = {"reflect": max(before, after) + 1, "symmetric": max(before, after),
                "circular": max(before, after)}.get(mode, 1)
    smallest = max(smallest, 1, dilation * (kernel - 1) + 1 - before - after)
    # beyond this size the two borders no longer interact and the pattern only repeats with the stride
    largest = smallest + 2 * (before + after + dilation * (kernel - 1) + 2 * stride) + 4
    best = max(_reads_at(n, kernel, stride, dilation, before, after, mode)
               for n in range(smallest, largest + 1))
    return max(best, 1)


def max_reads(kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
              padding: tuple[tuple[int, int], ...], mode: str) -> int:
    """Largest number of reads of one input element of a convolution (product over dimensions).

    Args:
        kernel: kernel size per spatial dimension.
        stride: stride per dimension.
        dilation: dilation per dimension.
        padding: (before, after) per dimension.
        mode: the padding mode.

    Returns:
        The count.

    Examples:
        >>> max_reads((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), "reflect")
        25
    """
    return math.prod(max_reads_1d(k, s, d, p, mode) for k, s, d, p in zip(kernel, stride, dilation, padding))
