"""The GPU check (perf/gpu_check.sh, ``python -m perf gpu-check``) dry-run on CPU, so that the one
prepared command for a lent GPU machine cannot rot: its plan names real cases and providers, a
step over its budget is killed with its children, and the whole command writes rows, a status
and a summary.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from perf import gpu_check as G
from perf.gpu_summary import targets


def test_plan_names_real_cases_and_providers():
    G.validate_plan()
    with pytest.raises(ValueError, match="unknown case 'bjork'"):
        G.validate_plan([G.Step("bjork", (8,), None, 1)])
    with pytest.raises(ValueError, match="has no provider"):
        G.validate_plan([G.Step("bjorck", (8,), ("liptriton-fast",), 1)])


def test_network_steps_split_by_provider_family_baseline_first():
    step = next(s for s in G.PLAN if s.case == "net_b_bf16")
    assert step.provider_groups() == [
        ["unconstrained", "unconstrained-compiled"],  # a compiled provider with its eager twin
        ["liptriton", "liptriton-compiled"],
        ["deel-torchlip"],
    ]
    assert step.provider_groups(dry_run=True) == [["unconstrained"], ["liptriton"], ["deel-torchlip"]]
    op = next(s for s in G.PLAN if s.case == "bjorck")
    assert op.provider_groups() == [["liptriton", "liptriton-compiled", "torch-ref"]]


def _alive(pid: int) -> bool:
    """True when ``pid`` runs (a killed process that nobody reaped yet is a zombie: not alive)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_step_over_budget_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    t0 = time.perf_counter()
    res = G.run_with_timeout([sys.executable, "-c", script], 1.5, tmp_path / "log")
    assert res["status"] == "timeout" and res["rc"] is None
    assert time.perf_counter() - t0 < 10
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    assert not _alive(grandchild)  # the whole process group went, not only the direct child
    assert "timeout" in (tmp_path / "log").read_text()
    assert G.run_with_timeout([sys.executable, "-c", "raise SystemExit(3)"], 30, tmp_path / "log")["rc"] == 3


def test_dry_run_writes_rows_status_and_summary(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "perf", "gpu-check", "--device", "cpu", "--dry-run", "--out", str(out)]
    cmd += ["--only", "net_c"]  # (perf's smoke test runs the other cases at tiny sizes)
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    # one process per provider family (the dry run runs the eager twin of a compiled provider)
    assert [s["name"] for s in status["steps"]] == [
        "tests (-m gpu)",
        "net_c [unconstrained]",
        "net_c [liptriton]",
        "net_c [deel-torchlip]",
    ]
    assert all(s["status"] == "ok" for s in status["steps"])
    rows = [json.loads(line) for line in (out / "cpu.jsonl").read_text().splitlines()]
    assert {(r["case"], r["provider"]) for r in rows} == {
        ("net_c", "liptriton"),  # the eager twin of liptriton-compiled in the dry run
        ("net_c", "unconstrained"),
        ("net_c", "deel-torchlip"),
    }
    assert all(r["correct"] and r["error"] is None and r["median_ms"] > 0 for r in rows)
    summary = (out / "summary.txt").read_text()
    collected = [line for line in summary.splitlines() if "tests collected" in line]
    assert collected and int(collected[0].split("/")[0]) > 10  # the CUDA tests the GPU run will run
    assert "net_c eager step, deel-torchlip / liptriton: " in summary


def test_bf16_network_case_runs_under_autocast():
    from perf.cases import CASES
    from perf.run import run_case

    case = next(c for c in CASES if c.name == "net_b_bf16")
    (row,) = run_case(case, (2, 8, 4), "tiny", "cpu", 1, 5.0, lambda *a: None, ["unconstrained"])
    assert row["dtype"] == "bfloat16" and row["correct"] and row["error"] is None
    seen = []
    step = case.make("unconstrained", (2, 8, 4), "cpu")
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(o.dtype) if isinstance(m, torch.nn.Conv2d) else None
    )
    try:
        step()
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}


def _row(case: str, provider: str, shape: str, ms: float, correct: bool = True) -> dict:
    return {
        "case": case,
        "provider": provider,
        "shape": shape,
        "median_ms": ms,
        "correct": correct,
        "error": None,
    }


def test_targets_read_a_cuda_run():
    rows = [
        _row("bjorck", "liptriton", "(256, 1568)", 1.0),
        _row("bjorck", "torch-ref", "(256, 1568)", 2.5),
        _row("copy", "torch", str(1 << 28), 1.0),  # 2^31 bytes in 1 ms
        _row("groupsort2", "liptriton", "(256, 256, 32, 32)", 1.0),  # 4 passes: 2^30 bytes in 1 ms
        _row("net_b_bf16", "unconstrained-compiled", "(256, 32, 32)", 10.0),
        _row("net_b_bf16", "liptriton-compiled", "(256, 32, 32)", 11.0),
        _row("net_b_bf16", "deel-torchlip", "(256, 32, 32)", 30.0, correct=False),
    ]
    lines = "\n".join(targets(rows))
    assert "Björck (256, 1568) fwd+bwd, torch-ref (direct) / liptriton: 2.5  (target >= 3.0) MISSED" in lines
    assert "groupsort2 (256, 256, 32, 32) fwd+bwd, fraction of copy bandwidth (4-pass floor): 0.5  " in lines
    assert "maxmin None" not in lines and "maxmin (no row)" in lines
    assert "net_b_bf16 step, liptriton-compiled / unconstrained-compiled: 1.1  (target <= 1.2) MET" in lines
    # a row whose correctness check failed gives no ratio
    assert "net_b_bf16 step, deel-torchlip / liptriton-compiled: n/a (no row)" in lines
