"""The text summary of ``python -m perf gpu-check``: step outcomes, the tests, a table of the rows
of the run, and the measured gaps against the targets of issues 15 and 12.

Fractions of the ceilings are computed from the same run: the bandwidth of the ``copy`` case and
the rate of the ``matmul`` case (float32 and tf32 cuBLAS). Björck's FLOPs are counted, not
assumed: :func:`bjorck_flops` runs the op's torch path (what liptriton computes) forward and
backward on meta tensors under ``torch.utils.flop_counter.FlopCounterMode``.

Example:
    >>> _shape_numel("(2, 3)"), _shape_numel("net-b")
    (6, None)
"""

from __future__ import annotations

import ast
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

__all__ = ["bjorck_flops", "targets", "write_summary"]


def _load(path: Path, run_id: str) -> list[dict]:
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("run_id") == run_id]


def _shape_numel(shape: str) -> int | None:
    try:
        v = ast.literal_eval(shape)
    except (ValueError, SyntaxError):
        return None
    return v if isinstance(v, int) else math.prod(v) if isinstance(v, tuple) else None


def _med(rows: list[dict], case: str, provider: str, shape: str | None = None) -> float | None:
    for r in rows:
        if r["case"] == case and r["provider"] == provider and (shape is None or r["shape"] == shape):
            ok = r["correct"] and not r["error"] and isinstance(r["median_ms"], float)
            return r["median_ms"] if ok and not math.isnan(r["median_ms"]) else None
    return None


def _peak(rows: list[dict], case: str, provider: str) -> float | None:
    for r in rows:
        if r["case"] == case and r["provider"] == provider and r["correct"] and r.get("peak_bytes"):
            return float(r["peak_bytes"])
    return None


def _largest(rows: list[dict], case: str, square: bool = False) -> str | None:
    shapes = {r["shape"] for r in rows if r["case"] == case and _shape_numel(r["shape"])}
    if square:
        shapes = {s for s in shapes if isinstance(ast.literal_eval(s), int)}
    return max(shapes, key=_shape_numel, default=None)


def bjorck_flops(m: int, n: int, n_iters: int) -> int | None:
    """FLOPs of liptriton's Björck (torch path) forward + backward on an (m, n) weight, or None."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import liptriton
    from liptriton import ops

    try:
        w = torch.randn(m, n, device="meta", requires_grad=True)
        with liptriton.config.force_torch(), FlopCounterMode(display=False) as fc:
            y = ops.bjorck(w, n_iters)
            torch.autograd.grad(y, w, torch.ones_like(y))
        return int(fc.get_total_flops())
    except Exception:  # noqa: BLE001  (a summary line says n/a rather than losing the summary)
        return None


def _line(name: str, value: float | None, target: str, ok: bool | None) -> str:
    shown = "n/a (no row)" if value is None else f"{value:.3g}"
    verdict = "" if value is None or ok is None else ("MET" if ok else "MISSED")
    return f"  {name}: {shown}  (target {target}) {verdict}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def targets(rows: list[dict]) -> list[str]:
    """One line per target: the measured value, the target, MET / MISSED (n/a without rows)."""
    from perf.makers import BJORCK_ITERS

    out = []
    # the layer the usage network spends its constraint on: the direct iteration (torch-ref)
    # against liptriton's choice (Gram space for a rectangular weight)
    rect = str((256, 1568))
    v = _ratio(_med(rows, "bjorck", "torch-ref", rect), _med(rows, "bjorck", "liptriton", rect))
    out.append(_line(f"Björck {rect} fwd+bwd, torch-ref (direct) / liptriton", v, ">= 3.0", v and v >= 3.0))
    n = _largest(rows, "bjorck", square=True) or "(no row)"
    t = _med(rows, "bjorck", "liptriton", n)
    flops = bjorck_flops(int(n), int(n), BJORCK_ITERS) if n.isdigit() else None
    for prov in ("torch-fp32", "torch-tf32"):
        mm = _largest(rows, "matmul")
        t_mm = _med(rows, "matmul", prov, mm)
        rate = 2 * int(mm) ** 3 / (t_mm * 1e-3) if t_mm else None
        ideal = flops / rate * 1e3 if flops and rate else None
        v = _ratio(t, ideal)
        out.append(
            _line(
                f"Björck {n} square fwd+bwd / ({flops or 0:.3g} FLOP at {prov} cuBLAS rate)",
                v,
                "<= 1.3",
                v and v <= 1.3,
            )
        )
    c = _largest(rows, "copy")
    t_copy = _med(rows, "copy", "torch", c)
    bw = 8 * int(c) / (t_copy * 1e-3) if t_copy else None
    for case in ("groupsort2", "maxmin"):
        s = _largest(rows, case)
        t = _med(rows, case, "liptriton", s)
        v = _ratio(
            16 * _shape_numel(s) / (t * 1e-3) if t and s else None, bw
        )  # x, y, dy, dx: 4 float32 passes
        out.append(
            _line(
                f"{case} {s or '(no row)'} fwd+bwd, fraction of copy bandwidth (4-pass floor)",
                v,
                ">= 0.7",
                v and v >= 0.7,
            )
        )
    s = _largest(rows, "power_iteration")
    t = _med(rows, "power_iteration", "liptriton", s)
    v = _ratio(6 * 4 * int(s) ** 2 / (t * 1e-3) if t else None, bw)  # 3 steps, W read twice per step
    out.append(
        _line(
            f"power iteration {s or '(no row)'} (3 steps), fraction of copy bandwidth",
            v,
            ">= 0.7",
            v and v >= 0.7,
        )
    )
    for case, want in (("net_b_bf16", 1.2), ("net_a", 1.3), ("net_b", 1.15)):
        base = _med(rows, case, "unconstrained-compiled")
        lipc = _med(rows, case, "liptriton-compiled")
        v = _ratio(lipc, base)
        out.append(
            _line(
                f"{case} step, liptriton-compiled / unconstrained-compiled", v, f"<= {want}", v and v <= want
            )
        )
        want_deel = 4.0 if case == "net_b_bf16" else 3.0 if case == "net_a" else None
        if want_deel:
            v = _ratio(_med(rows, case, "deel-torchlip"), lipc)
            out.append(
                _line(
                    f"{case} step, deel-torchlip / liptriton-compiled",
                    v,
                    f">= {want_deel}",
                    v and v >= want_deel,
                )
            )
    peaks = [_peak(rows, "net_b", p) for p in ("liptriton-compiled", "unconstrained-compiled")]
    v = _ratio(*peaks)
    out.append(
        _line(
            "net_b step peak memory, liptriton-compiled / unconstrained-compiled", v, "<= 1.2", v and v <= 1.2
        )
    )
    for case in ("net_a_eval", "net_b_eval"):
        v = _ratio(_med(rows, case, "liptriton-compiled"), _med(rows, case, "unconstrained-compiled"))
        out.append(
            _line(f"{case}, liptriton-compiled / unconstrained-compiled", v, "<= 1.05", v and v <= 1.05)
        )
    v = _ratio(_med(rows, "net_c", "deel-torchlip"), _med(rows, "net_c", "liptriton"))
    out.append(_line("net_c eager step, deel-torchlip / liptriton", v, ">= 1.5", v and v >= 1.5))
    return out


def _table(rows: list[dict]) -> list[str]:
    base = {(r["case"], r["shape"]): r["median_ms"] for r in rows if r["provider"] == r["baseline"]}
    lines = [
        f"  {'case':<15} {'shape':<18} {'dtype':<8} {'provider':<23} {'median ms':>10} {'x base':>7}  check"
    ]
    for r in rows:
        b = base.get((r["case"], r["shape"]))
        ratio = f"{r['median_ms'] / b:.2f}" if b and r["correct"] and not math.isnan(r["median_ms"]) else "-"
        check = "ok" if r["correct"] else ("ERROR " + (r["error"] or "")[:60] if r["error"] else "FAIL")
        lines.append(
            f"  {r['case']:<15} {r['shape']:<18} {r['dtype']:<8} {r['provider']:<23} "
            f"{r['median_ms']:>10.3g} {ratio:>7}  {check}"
        )
    return lines


def _tests(out: Path, dry_run: bool) -> list[str]:
    xml = out / "tests.xml"
    if not dry_run and xml.exists():
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError:
            return ["  tests.xml unreadable (killed mid-write?): see tests.log"]
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        a = suite.attrib
        counts = ", ".join(f"{k} {a.get(k)}" for k in ("tests", "failures", "errors", "skipped"))
        lines = [f"  {counts}, {float(a.get('time', 0)):.0f} s"]
        for case in suite.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                msg = (bad.get("message") or "").splitlines()[0][:100] if bad.get("message") else ""
                lines.append(f"  FAILED {case.get('classname')}::{case.get('name')}: {msg}")
        return lines
    log = out / "tests.log"
    found = (
        re.findall(r"^(\d+(?:/\d+)? tests? collected.*)$", log.read_text(), re.MULTILINE)
        if log.exists()
        else []
    )
    return [f"  {found[-1]}" if found else "  no test result (see tests.log)"]


def write_summary(
    out: Path, device: str, run_id: str, steps: list[dict], dry_run: bool, wall_s: float
) -> Path:
    """Write ``out/summary.txt`` from the steps so far and the rows of ``run_id``; return its path."""
    rows = _load(out / f"{device}.jsonl", run_id)
    dev = rows[0]["device_name"] if rows else device
    head = [f"gpu-check {'DRY RUN ' if dry_run else ''}on {dev}", f"run {run_id}, {wall_s:.0f} s so far"]
    if rows:
        head.append(f"torch {rows[0]['torch']}, triton {rows[0]['triton']}")
    lines = [*head, "", "steps:"]
    for s in steps:
        lines.append(
            f"  {s['name']:<22} {s['status']:<8} {s.get('wall_s', 0):>6} s of {s.get('budget_s', 0)}"
            f"  {s.get('note', '')}"
        )
    if any(s["kind"] == "tests" for s in steps):
        lines += ["", "tests:", *_tests(out, dry_run)]
    lines += ["", "rows (median of the device timer; x base = ratio to the case's baseline provider):"]
    lines += _table(rows)
    lines += ["", "targets (issue 15 item 4, issue 12 items 6-7):", *targets(rows)]
    path = out / "summary.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
