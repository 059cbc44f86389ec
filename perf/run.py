"""``python -m perf run``: check, time and record every case of a suite.

For each case and size: build one call per provider (timing the build, which includes
compilation for compiled providers, as ``setup_s``), run it once and compare its result with
the case's reference provider (``correct``), then time all providers round-robin in the same
run, measure peak memory where asked, and append one row per (case, size, provider) to
``perf/history/<device>.jsonl``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import time
import traceback
from pathlib import Path

import torch

from perf import timing
from perf.cases import CASES, Case, sizes_for
from perf.providers import has_torchlip

__all__ = ["environment", "history_path", "run"]

HISTORY = Path(__file__).resolve().parent / "history"


def history_path(device: str) -> Path:
    """The history file of ``device`` ("cpu" or "cuda")."""
    return HISTORY / f"{device}.jsonl"


def _git_commit() -> str:
    """HEAD's short hash; ``$PERF_COMMIT`` when set (a copied tree without .git, e.g. a GPU machine)."""
    if os.environ.get("PERF_COMMIT"):
        return os.environ["PERF_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{torch.get_num_threads()} threads"
    except OSError:
        pass
    return platform.processor() or "cpu"


def environment(device: str) -> dict:
    """Fields shared by every row of a run: device name, versions, commit, date."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": device,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "triton": triton_version,
        "commit": _git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach()]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _tolerance(dtype: str, device: str) -> tuple[float, float]:
    """(rtol, atol relative to the reference's largest magnitude) of the correctness check:
    float32 on CPU; tf32 on CUDA (float32 convolutions and Triton dot products use it); bf16."""
    if dtype in ("bfloat16", "float16"):
        return 3e-2, 3e-2
    return (1e-3, 1e-4) if device == "cpu" else (5e-3, 5e-3)


def _close(a: object, b: object, rtol: float = 1e-3, atol: float = 1e-4) -> bool:
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb):
        return False
    for x, y in zip(ta, tb):
        if x.shape != y.shape or not bool(torch.isfinite(x).all()):
            return False
        scale = max(1.0, float(y.float().abs().max())) if y.numel() else 1.0
        if not torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol * scale):
            return False
    return True


def _grads_alive(module: torch.nn.Module | None) -> bool:
    """Every weight of a trained network got a finite, nonzero gradient."""
    if module is None:
        return True
    grads = [p.grad for n, p in module.named_parameters() if n.endswith(("weight", "original"))]
    return bool(grads) and all(
        g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().max() > 0) for g in grads
    )


def _providers(case: Case, size: object, suite: str, device: str) -> list[str]:
    out = []
    for p in case.providers:
        if p == "deel-torchlip" and not has_torchlip():
            continue
        if p.endswith("-compiled") and suite in ("tiny", "quick") and device == "cpu":
            continue  # CPU compile times (minutes per network) do not fit these suites
        if p == "torch-ref-compiled" and device == "cpu":
            continue  # on CPU liptriton's dispatch takes this same reference: it would time the same graph
        if p.endswith("-compiled") and case.compile_max and isinstance(size, int) and size > case.compile_max:
            continue
        out.append(p)
    return out


def _reference_of(case: Case, provider: str) -> str:
    if case.reference is None or provider.startswith(("relu", "unconstrained")):
        return provider.removesuffix("-compiled")  # networks, baselines: compiled against eager self
    return case.reference


def run_case(
    case: Case,
    size: object,
    suite: str,
    device: str,
    reps: int,
    budget_s: float,
    log=print,
    providers: list[str] | None = None,
) -> list[dict]:
    """Check and time every provider of ``case`` at ``size``; return the rows (without env)."""
    fns, outs, setup, errors, modules = {}, {}, {}, {}, {}
    for p in _providers(case, size, suite, device):
        if providers and p not in providers:
            continue
        t0 = time.perf_counter()
        try:
            fn = case.make(p, size, device)
            outs[p] = fn()  # first call: compiles, warms up, and is what the check compares
            fns[p] = fn
            modules[p] = getattr(fn, "module", None)
        except Exception as err:  # noqa: BLE001  (a provider that cannot run is recorded, not fatal)
            errors[p] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            log(f"  {case.name}[{size}] {p}: ERROR {errors[p]}")
            if suite == "tiny":
                traceback.print_exc()
        setup[p] = time.perf_counter() - t0
    correct = {}
    rtol, atol = _tolerance(case.dtype, device)
    for p in fns:
        ref = _reference_of(case, p)
        ok = (
            _close(outs[p], outs[ref], rtol, atol)
            if ref in outs and ref != p
            else bool(all(torch.isfinite(t).all() for t in _tensors(outs[p])))
        )
        if case.mode == "train-step":
            ok = ok and _grads_alive(modules[p])
        if case.check is not None:
            ok = ok and bool(case.check(p, size, device))
        correct[p] = ok
    times = (
        timing.time_cuda_all(fns)
        if device == "cuda"
        else timing.time_interleaved(fns, reps=reps, warmup=1 if suite != "tiny" else 0, budget_s=budget_s)
    )
    rows = []
    for p in list(fns) + list(errors):
        med, p20, p80 = times.get(p, (math.nan,) * 3)
        peak = None
        if p in fns and (device == "cuda" or case.group == "network") and suite != "tiny":
            peak = timing.peak_memory(fns[p], device)
        rows.append(
            {
                "case": case.name,
                "group": case.group,
                "mode": case.mode,
                "provider": p,
                "baseline": case.baseline,
                "shape": case.shape_of(size),
                "dtype": case.dtype,
                "median_ms": med,
                "p20_ms": p20,
                "p80_ms": p80,
                "peak_bytes": peak,
                "setup_s": round(setup[p], 3),
                "correct": correct.get(p, False),
                "error": errors.get(p),
            }
        )
    return rows


def run(
    suite: str = "quick",
    device: str = "cpu",
    only: list[str] | None = None,
    out: Path | None = None,
    reps: int | None = None,
    log=print,
    run_id: str | None = None,
    providers: list[str] | None = None,
    sizes: list | None = None,
) -> list[dict]:
    """Run ``suite`` on ``device`` and append its rows to the device's history.

    Args:
        suite: "tiny" (smoke test: tiny sizes, eager providers, untimed in spirit), "quick" or "full".
        device: "cpu" or "cuda".
        only: case names to run (default: all).
        out: history file (default ``perf/history/<device>.jsonl``); None-like "-" writes nothing.
        reps: timed rounds per case (default: 3 tiny, 7 quick, 10 full on CPU).
        log: progress printer.
        run_id: join an existing run (rows of several processes compared as one run).
        providers: run only these providers (default: all of each case).
        sizes: run only these sizes (default: the suite's sizes of each case).

    Returns:
        The rows written (each with the run's environment fields and ``run_id``).

    Example:
        >>> rows = run("tiny", only=["frobenius"], out=Path("/dev/null"), log=lambda *a: None)
        >>> sorted({r["provider"] for r in rows})
        ['liptriton', 'torch-ref']
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("perf run: --device cuda asked but CUDA is not available")
    env = environment(device)
    env["suite"] = suite
    env["run_id"] = run_id or f"{env['date']}/{env['commit']}/{suite}"
    reps = reps or {"tiny": 2, "quick": 7, "full": 10}[suite]
    rows: list[dict] = []
    for case in CASES:
        if only and case.name not in only:
            continue
        budget = 5.0 if suite == "tiny" else (60.0 if case.group == "network" else 15.0)
        for size in sizes if sizes is not None else sizes_for(case, suite, device):
            t0 = time.perf_counter()
            case_rows = [
                {**env, **r} for r in run_case(case, size, suite, device, reps, budget, log, providers)
            ]
            rows += case_rows
            base = {r["provider"]: r["median_ms"] for r in case_rows}.get(case.baseline)
            summary = ", ".join(
                f"{r['provider']}={r['median_ms']:.3g}ms" + ("" if r["correct"] else "(FAIL)")
                for r in case_rows
            )
            took = time.perf_counter() - t0
            log(f"{case.name}[{size}] ({took:.0f}s; baseline {case.baseline}={base}): {summary}")
            if out is None or str(out) != "-":
                path = Path(out) if out is not None else history_path(device)
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as fh:
                    for r in case_rows:
                        fh.write(json.dumps(r) + "\n")
    return rows
