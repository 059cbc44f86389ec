"""``python -m perf compare``: the newest run against a baseline run of the same device, on ratios.

Every row's time is divided by the time of its case's baseline provider at the same shape in
the same run (a noisy machine slows both alike). A liptriton provider regresses when its ratio
grew by more than ``threshold`` (relative) since the baseline run. A row whose correctness
check failed is never reported as a speed-up: it shows ``CHECK FAILED`` and fails the
comparison, like a regression (exit code 1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["compare", "format_table", "load", "ratios", "runs"]


def load(path: Path) -> list[dict]:
    """Rows of a history file (empty when missing)."""
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def runs(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """Rows grouped by ``run_id``, oldest first (file order)."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["run_id"], []).append(r)
    return list(out.items())


def ratios(run_rows: list[dict]) -> dict[tuple[str, str, str], dict]:
    """(case, shape, provider) -> row with ``ratio`` = median / baseline provider's median."""
    base = {(r["case"], r["shape"]): r["median_ms"] for r in run_rows if r["provider"] == r["baseline"]}
    out = {}
    for r in run_rows:
        b = base.get((r["case"], r["shape"]))
        ok = b is not None and r["median_ms"] is not None and not math.isnan(r["median_ms"]) and b > 0
        out[(r["case"], r["shape"], r["provider"])] = {**r, "ratio": r["median_ms"] / b if ok else math.nan}
    return out


def _pick_base(all_runs: list[tuple[str, list[dict]]], base_rev: str | None) -> tuple[str, list[dict]] | None:
    candidates = all_runs[:-1]
    if base_rev:
        candidates = [(k, v) for k, v in candidates if v[0]["commit"].startswith(base_rev[:10])]
    return candidates[-1] if candidates else None


def compare(rows: list[dict], base_rev: str | None = None, threshold: float = 0.25) -> tuple[list[dict], int]:
    """Compare the newest run of ``rows`` with the baseline run.

    Args:
        rows: the rows of one device's history.
        base_rev: a commit (prefix) whose newest run is the baseline; default the previous run.
        threshold: relative growth of a ratio counted as a regression (0.25: 25 % slower).

    Returns:
        (table rows with ``base_ratio``, ``new_ratio``, ``change`` and ``status``, exit code).

    Example:
        >>> compare([], None)
        ([], 0)
    """
    all_runs = runs(rows)
    if not all_runs:
        return [], 0
    new_id, new_rows = all_runs[-1]
    base = _pick_base(all_runs, base_rev)
    base_r = ratios(base[1]) if base else {}
    table, code = [], 0
    for key, r in ratios(new_rows).items():
        old = base_r.get(key, {}).get("ratio", math.nan)
        change = r["ratio"] / old if old and not math.isnan(old) and not math.isnan(r["ratio"]) else math.nan
        if r.get("error"):
            status = "ERROR"
        elif not r["correct"]:
            status, code = "CHECK FAILED", 1
        elif r["provider"].startswith("liptriton") and not math.isnan(change) and change > 1 + threshold:
            status, code = "REGRESSION", 1
        elif not math.isnan(change) and change < 1 / (1 + threshold):
            status = "faster"
        else:
            status = "ok"
        table.append(
            {
                "case": key[0],
                "shape": key[1],
                "provider": key[2],
                "baseline": r["baseline"],
                "base_ratio": old,
                "new_ratio": r["ratio"] if r["correct"] else math.nan,
                "change": change if r["correct"] else math.nan,
                "status": status,
                "new_run": new_id,
                "base_run": base[0] if base else None,
            }
        )
    return table, code


def _f(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def format_table(table: list[dict]) -> str:
    """A markdown table of :func:`compare`'s rows."""
    lines = [
        "| case | shape | provider | baseline | base ratio | new ratio | change | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        lines.append(
            f"| {t['case']} | {t['shape']} | {t['provider']} | {t['baseline']} | {_f(t['base_ratio'])} "
            f"| {_f(t['new_ratio'])} | {_f(t['change'])} | {t['status']} |"
        )
    return "\n".join(lines)
