"""Smoke test of perf/: the suite runs at tiny sizes (not timed), compare and plot work.

perf/ is not installed; it is imported from the repository root.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perf import compare as C
from perf.cases import CASES
from perf.run import run

NETWORK_PROVIDERS = ["liptriton", "unconstrained", "deel-torchlip"]


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory) -> tuple[list[dict], Path]:
    path = tmp_path_factory.mktemp("perf") / "cpu.jsonl"
    quiet = lambda *a: None
    ops = [c.name for c in CASES if c.group != "network"]
    rows = run("tiny", "cpu", ops, path, reps=1, log=quiet, run_id="smoke")
    rows += run(
        "tiny",
        "cpu",
        ["net_a", "net_a_eval"],
        path,
        reps=1,
        log=quiet,
        run_id="smoke",
        providers=NETWORK_PROVIDERS,
    )
    return rows, path


def test_every_case_runs_and_passes_its_check(tiny_rows):
    rows, path = tiny_rows
    assert {r["case"] for r in rows} == {c.name for c in CASES if c.group != "network"} | {
        "net_a",
        "net_a_eval",
    }
    bad = [(r["case"], r["provider"], r["error"]) for r in rows if r["error"] or not r["correct"]]
    assert not bad
    assert all(r["median_ms"] > 0 for r in rows)
    keys = {
        "case",
        "provider",
        "shape",
        "dtype",
        "median_ms",
        "p20_ms",
        "p80_ms",
        "peak_bytes",
        "device_name",
        "torch",
        "triton",
        "commit",
        "date",
        "correct",
    }
    assert keys <= set(rows[0])
    assert len(path.read_text().splitlines()) == len(rows)


def test_compare_flags_regressions_and_refuses_failed_checks(tiny_rows):
    rows, _ = tiny_rows
    table, code = C.compare(rows)
    assert code == 0 and all(t["status"] in ("ok", "faster", "ERROR") for t in table)
    new = [json.loads(json.dumps(r)) for r in rows]
    for r in new:
        r["run_id"] = "next"
        if r["case"] == "bjorck" and r["provider"] == "liptriton":
            r["median_ms"] *= 10  # ten times slower against the same baseline
        if r["case"] == "frobenius" and r["provider"] == "liptriton":
            r["median_ms"] /= 10
            r["correct"] = False  # faster but wrong: never reported as a speed-up
    table, code = C.compare(rows + new, threshold=0.25)
    status = {(t["case"], t["provider"]): t for t in table}
    assert code == 1
    assert status[("bjorck", "liptriton")]["status"] == "REGRESSION"
    assert status[("frobenius", "liptriton")]["status"] == "CHECK FAILED"
    assert math.isnan(status[("frobenius", "liptriton")]["new_ratio"])
    assert "REGRESSION" in C.format_table(table)


def test_plot_writes_charts_and_markdown(tiny_rows, tmp_path):
    pytest.importorskip("matplotlib")
    from perf.plot import plot

    _, path = tiny_rows
    written = plot(("cpu",), docs=tmp_path, history={"cpu": path})
    names = {p.name for p in written}
    assert {"perf_history_cpu.png", "perf_speedup_cpu.png", "perf.md"} <= names
    text = (tmp_path / "perf.md").read_text()
    assert "Targets" in text and "| groupsort2 |" in text


def test_cli_compare_without_history(tmp_path, capsys):
    from perf.__main__ import main

    assert main(["compare", "--history", str(tmp_path / "none.jsonl")]) == 0
    assert "no runs" in capsys.readouterr().out


def test_cli_run_threads_is_applied_and_recorded(tmp_path):
    """`perf run --threads 1`: the rows say "x1 threads" (what a shared CPU should be timed with);
    the thread count is restored after the test."""
    import torch

    from perf.__main__ import main

    before = torch.get_num_threads()
    out = tmp_path / "cpu.jsonl"
    try:
        assert main(["run", "--suite", "tiny", "--case", "copy", "--out", str(out), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # the CPU's name carries the thread count where /proc/cpuinfo names the model (Linux x86, CI)
    assert rows and all(r["device_name"].endswith("x1 threads") or "threads" not in r["device_name"] for r in rows)
    with pytest.raises(SystemExit):
        main(["run", "--suite", "tiny", "--case", "copy", "--out", "-", "--threads", "0"])
