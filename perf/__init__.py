"""liptriton benchmarks: cases as data, a runner that records history, a comparison, plots.

Run from the repository root: ``python -m perf run|compare|plot`` (see docs/perf.md).
"""
