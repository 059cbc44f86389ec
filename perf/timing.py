"""Timers and the peak-memory probe.

CPU: wall clock (``time.perf_counter``) around each call, after warm-up; the median and the
20th/80th percentiles of the repetitions. Absolute CPU times on a shared machine are noise;
what the suite reports on CPU are ratios between providers measured in the same run, with the
providers of one case interleaved round-robin so that a burst of load hits all of them alike.

CUDA: ``triton.testing.do_bench`` (device events, L2 flushed between calls), quantiles
(0.5, 0.2, 0.8).

Peak memory: CUDA ``torch.cuda.max_memory_allocated`` above the memory in use before the call;
CPU: the torch profiler's allocation events (``profile_memory=True``), summed in time order
(the high-water mark of tensor memory allocated by the call, above what was live before it).
tracemalloc cannot see tensor storage (torch allocates it outside Python's allocator).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["peak_memory", "quantiles", "time_cuda", "time_cuda_all", "time_interleaved"]


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    """Return (median, p20, p80) of ``samples`` (milliseconds)."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0], s[0], s[0]
    q = statistics.quantiles(s, n=10, method="inclusive")
    return statistics.median(s), q[1], q[7]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    reps: int,
    warmup: int = 1,
    device: str = "cpu",
    budget_s: float | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Time several callables round-robin (one call of each per round, the order rotated every
    round) with the wall clock.

    Args:
        fns: provider name -> zero-argument callable (one benchmark call).
        reps: rounds to time (fewer if ``budget_s`` runs out, at least 3).
        warmup: untimed rounds first (compilation, caches).
        device: "cpu" or "cuda" (synchronized around each call).
        budget_s: stop adding rounds once this many seconds were spent timing.

    Returns:
        provider -> (median, p20, p80) in milliseconds.

    Example:
        >>> out = time_interleaved({"a": lambda: sum(range(100))}, reps=3)
        >>> sorted(out)
        ['a']
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    names = list(fns)
    for r in range(reps):
        # rotate the order every round: the first call of a round is slower (measured up to 3x
        # on CPU), and a fixed order would always charge that to the same provider
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = fns[name]
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3)
        if budget_s is not None and r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {k: quantiles(v) for k, v in samples.items()}


def time_cuda(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Time ``fn`` on CUDA with ``triton.testing.do_bench``: (median, p20, p80) in milliseconds."""
    from triton.testing import do_bench

    q = do_bench(fn, quantiles=[0.5, 0.2, 0.8], return_mode="median")
    return float(q[0]), float(q[1]), float(q[2])


def time_cuda_all(fns: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float, float]]:
    """:func:`time_cuda` of each provider: provider -> (median, p20, p80) in milliseconds."""
    return {k: time_cuda(fn) for k, fn in fns.items()}


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and str(node.extra_fields.device) == "cpu":
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    cur = peak = 0
    for _, size in sorted(allocs):
        cur += size
        peak = max(peak, cur)
    return peak


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak tensor memory (bytes) allocated by one call of ``fn`` above what was live before it.

    Args:
        fn: zero-argument callable, already warmed up.
        device: "cpu" (torch profiler allocation events) or "cuda" (max_memory_allocated).

    Returns:
        The high-water mark in bytes.

    Example:
        >>> peak_memory(lambda: torch.ones(1024)) >= 4096
        True
    """
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    return _cpu_peak(fn)
