"""``python -m perf gpu-check``: the one prepared command for a lent GPU machine.

A GPU machine is lent only sometimes, for minutes, so everything it must do is prepared here
and dry-run on CPU: ``perf/gpu_check.sh`` installs what the machine lacks (the committed
deel-torchlip wheel, the project in editable mode) and calls this module, which

1. runs the CUDA tests (``pytest -m gpu``: the GPU-marked op tests at real sizes and the CUDA
   parameters of tests/test_cuda_paths.py, float32 and bf16 autocast),
2. runs the benchmark steps of :data:`PLAN` in priority order, each in its own process with a
   hard time limit (a step over its budget is killed with its process group and the check goes
   on), all under one total deadline,
3. writes under ``--out``: ``<device>.jsonl`` (perf history rows, to append to
   ``perf/history/<device>.jsonl``), ``summary.txt`` (a short table and the issue targets,
   rewritten after every step so that a killed run still leaves one), ``status.json`` (each
   step's outcome), ``tests.xml`` / ``tests.log`` and ``bench.log``.

``--dry-run`` replaces every size by the case's tiny size and the test run by the collection of
the same selection, so that the whole command runs on CPU in under a minute.

Example:
    >>> [s.case for s in PLAN][:2]
    ['copy', 'matmul']
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from perf.providers import NET_C_PROVIDERS

__all__ = ["PLAN", "Step", "add_arguments", "gpu_check", "main", "run_with_timeout", "validate_plan"]

ROOT = Path(__file__).resolve().parent.parent

_NET = ["liptriton", "liptriton-compiled", "deel-torchlip", "unconstrained", "unconstrained-compiled"]
_EVAL = ["liptriton", "liptriton-compiled", "unconstrained", "unconstrained-compiled"]


@dataclass(frozen=True)
class Step:
    """One benchmark step of the GPU check: a case, its CUDA sizes and providers, a time budget.

    Attributes:
        case: a case name of ``perf.cases.CASES``.
        sizes: the sizes to run on CUDA (the dry run takes the case's tiny sizes instead).
        providers: the providers to run (None: every provider of the case).
        budget_s: wall seconds after which the step's process is killed (per process when split).
        split: one process per provider family (a compiled provider with its eager twin, which its
            check compares it with), so that a family whose compile outlasts its budget loses
            only its own rows.
    """

    case: str
    sizes: tuple
    providers: tuple[str, ...] | None
    budget_s: float
    split: bool = False

    def provider_groups(self, dry_run: bool = False) -> list[list[str]]:
        """The provider lists of the step's processes ([[]]: one process, every provider).

        Example:
            >>> Step("net_a", ((64, 28, 32),), ("liptriton-compiled", "deel-torchlip"), 60, True).provider_groups()
            [['liptriton', 'liptriton-compiled'], ['deel-torchlip']]
            >>> Step("net_a", ((64, 28, 32),), ("deel-torchlip", "unconstrained"), 60, True).provider_groups()
            [['unconstrained'], ['deel-torchlip']]
        """
        providers = list(self.providers or ())
        if dry_run:  # CPU compiles take minutes: the dry run runs the eager twin of each compiled provider
            providers = list(dict.fromkeys(p.removesuffix("-compiled") for p in providers))
        if not self.split:
            return [providers]
        families: dict[str, list[str]] = {}
        for p in providers:
            base = p.removesuffix("-compiled")
            families.setdefault(base, [base] if p != base else [])
            if p not in families[base]:
                families[base].append(p)
        # the baseline's family first, then liptriton's: the ratios need those two
        order = {"unconstrained": 0, "liptriton": 1}
        return sorted(families.values(), key=lambda g: order.get(g[0], 2))


#: Benchmark steps, most important first (a step that no longer fits the deadline is skipped).
PLAN: list[Step] = [
    Step("copy", (1 << 28,), None, 15),
    Step("matmul", (4096, 8192), None, 20),
    Step(
        "bjorck",
        (64, (64, 576), 256, (256, 1568), 4096),
        ("liptriton", "liptriton-compiled", "torch-ref"),
        60,
    ),
    Step(
        "net_b_bf16",
        ((256, 32, 32),),
        ("liptriton-compiled", "unconstrained-compiled", "deel-torchlip"),
        75,
        split=True,
    ),
    Step("net_a", ((64, 28, 32),), tuple(_NET), 75, split=True),
    Step("net_b", ((128, 32, 32),), tuple(_NET), 75, split=True),
    Step("power_iteration", (1024, 4096), ("liptriton", "torch-ref"), 12),
    Step("groupsort2", ((256, 256, 32, 32),), ("liptriton", "torch-ref", "deel-torchlip", "relu"), 15),
    Step("maxmin", ((256, 256, 32, 32),), ("liptriton", "torch-ref", "deel-torchlip", "relu"), 15),
    Step("hkr_multiclass", (1 << 20,), ("liptriton", "torch-ref", "deel-torchlip"), 15),
    Step("net_c", ((64, 8, 16),), tuple(NET_C_PROVIDERS), 45, split=True),
    Step("net_a_eval", ((64, 28, 32),), tuple(_EVAL), 45, split=True),
    Step("net_b_eval", ((128, 32, 32),), tuple(_EVAL), 45, split=True),
]

#: pytest selection of the CUDA tests, and the seconds they may take together.
TEST_SELECTION = "gpu"
TEST_BUDGET_S = 150.0
#: seconds kept back at the end for the summary
RESERVE_S = 10.0
#: the smallest step budget of the dry run (tiny sizes, but liptriton's eval switch converges
#: every state: a tiny network's eval step took 18-40 s on the shared 2-core CPU)
DRY_RUN_MIN_BUDGET_S = 90.0


def validate_plan(plan: list[Step] | None = None) -> None:
    """Raise ValueError when a step names an unknown case or provider.

    Example:
        >>> validate_plan()
    """
    from perf.cases import CASES

    cases = {c.name: c for c in CASES}
    for step in plan or PLAN:
        if step.case not in cases:
            raise ValueError(f"gpu-check plan: unknown case {step.case!r}; expected one of {sorted(cases)}")
        unknown = set(step.providers or ()) - set(cases[step.case].providers)
        if unknown:
            raise ValueError(f"gpu-check plan: case {step.case!r} has no provider {sorted(unknown)}")
        if not step.sizes or step.budget_s <= 0:
            raise ValueError(f"gpu-check plan: step {step.case!r} needs sizes and a positive budget")


def run_with_timeout(cmd: list[str], timeout_s: float, log_path: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` in a new process group, its output appended to ``log_path``; kill the whole
    group (pytest workers, compile workers) once ``timeout_s`` seconds have passed.

    Returns:
        ``{"status": "ok" | "failed" | "timeout", "rc": exit code or None, "wall_s": seconds}``.

    Example:
        >>> import sys, tempfile
        >>> log = Path(tempfile.mkdtemp()) / "log"
        >>> run_with_timeout([sys.executable, "-c", "pass"], 30, log)["status"]
        'ok'
    """
    t0 = time.perf_counter()
    with log_path.open("a") as fh:
        fh.write(f"\n=== {' '.join(cmd)} (limit {timeout_s:.0f} s)\n")
        fh.flush()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=max(timeout_s, 0.1))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
        wall = time.perf_counter() - t0
        fh.write(f"=== {status} (rc {rc}) after {wall:.1f} s\n")
    return {"status": status, "rc": rc, "wall_s": round(wall, 1)}


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _tests_command(out: Path, dry_run: bool) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-m", TEST_SELECTION, "-q", "-p", "no:cacheprovider", "tests"]
    cmd.append("--continue-on-collection-errors")  # a module that cannot import must not stop the rest
    if dry_run:
        return [*cmd, "--collect-only"]
    cmd += ["-n", "4", f"--junitxml={out / 'tests.xml'}"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append("--timeout=100")  # one hung test must not eat the whole test budget
    return cmd


def _bench_command(
    step: Step, device: str, dry_run: bool, rows_path: Path, run_id: str, providers: list[str]
) -> list[str]:
    from perf.cases import CASES, sizes_for

    case = next(c for c in CASES if c.name == step.case)
    sizes = sizes_for(case, "tiny", "cpu") if dry_run else list(step.sizes)
    cmd = [sys.executable, "-m", "perf", "run", "--device", device, "--case", step.case]
    cmd += ["--suite", "tiny" if dry_run else "full", "--out", str(rows_path), "--run-id", run_id]
    cmd += [a for s in sizes for a in ("--size", repr(s))]
    cmd += [a for p in providers for a in ("--provider", p)]
    return cmd


def _count_rows(path: Path, run_id: str, case: str, providers: list[str]) -> tuple[int, int]:
    """(rows of ``case`` (and ``providers``, if any) in this run, those with an error or a failed check)."""
    if not path.exists():
        return 0, 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    mine = [
        r
        for r in rows
        if r.get("run_id") == run_id
        and r.get("case") == case
        and (not providers or r["provider"] in providers)
    ]
    return len(mine), sum(1 for r in mine if r.get("error") or not r.get("correct"))


def gpu_check(
    device: str = "cuda",
    out: Path = Path("gpu-out"),
    dry_run: bool = False,
    total_s: float | None = None,
    only: list[str] | None = None,
    skip_tests: bool = False,
    log=print,
) -> list[dict]:
    """Run the CUDA tests and the benchmark steps of :data:`PLAN` under one deadline.

    Args:
        device: "cuda" on the GPU machine, "cpu" for the dry run.
        out: output folder (created); see the module docstring for what it holds.
        dry_run: tiny sizes, tests collected only (a CPU check that the command works).
        total_s: wall seconds for the whole check; steps that no longer fit are skipped
            (default 450, or 900 for the dry run).
        only: run only the benchmark steps of these cases.
        skip_tests: do not run the tests.
        log: progress printer.

    Returns:
        The status of every step (also written to ``status.json``).
    """
    from perf.gpu_summary import write_summary
    from perf.run import _git_commit

    validate_plan()
    start = time.perf_counter()
    deadline = start + (total_s or (900.0 if dry_run else 450.0))
    out = Path(out).resolve()  # the children run in the repository root
    out.mkdir(parents=True, exist_ok=True)
    rows_path, status_path = out / f"{device}.jsonl", out / "status.json"
    run_id = f"{_now()}/{_git_commit()}/gpu-check" + ("-dry" if dry_run else "")
    steps: list[dict] = []

    def finish_step(entry: dict) -> None:
        steps.append(entry)
        log(
            f"gpu-check: {entry['name']}: {entry['status']} ({entry.get('wall_s', 0)} s) {entry.get('note', '')}"
        )
        status_path.write_text(json.dumps({"run_id": run_id, "dry_run": dry_run, "steps": steps}, indent=1))
        write_summary(out, device, run_id, steps, dry_run, time.perf_counter() - start)

    if not skip_tests:
        budget = min(TEST_BUDGET_S, deadline - time.perf_counter() - RESERVE_S)
        res = run_with_timeout(_tests_command(out, dry_run), budget, out / "tests.log", _env())
        finish_step(
            {"name": f"tests (-m {TEST_SELECTION})", "kind": "tests", "budget_s": round(budget), **res}
        )
    for step in PLAN:
        if only and step.case not in only:
            continue
        # the dry run checks the plumbing on a slow, shared CPU: its tiny cases get a looser budget
        budget = max(step.budget_s, DRY_RUN_MIN_BUDGET_S) if dry_run else step.budget_s
        for providers in step.provider_groups(dry_run):
            name = step.case + (f" [{', '.join(providers)}]" if step.split else "")
            entry = {"name": name, "kind": "bench", "budget_s": budget}
            left = deadline - time.perf_counter() - RESERVE_S
            if left < min(budget, 15.0):
                finish_step({**entry, "status": "skipped", "note": f"no time left ({left:.0f} s)"})
                continue
            cmd = _bench_command(step, device, dry_run, rows_path, run_id, providers)
            res = run_with_timeout(cmd, min(budget, left), out / "bench.log", _env())
            rows, bad = _count_rows(rows_path, run_id, step.case, providers)
            note = f"{rows} rows" + (f", {bad} with an error or a failed check" if bad else "")
            finish_step({**entry, **res, "rows": rows, "note": note})
    return steps


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m perf gpu-check``."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, tests collected only (CPU check)")
    parser.add_argument(
        "--out", default=os.environ.get("OUT") or "gpu-out", help="output folder (default $OUT)"
    )
    parser.add_argument(
        "--total-s", type=float, help="wall seconds for the whole check (default 450; dry run 900)"
    )
    parser.add_argument("--only", action="append", help="run only this case's benchmark step (repeatable)")
    parser.add_argument("--skip-tests", action="store_true")


def main(args: argparse.Namespace) -> int:
    """Entry point of ``python -m perf gpu-check``; exit 0 when every step ran and passed."""
    if args.device == "cuda" and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(
                "perf gpu-check: --device cuda but CUDA is not available (use --device cpu --dry-run)"
            )
    steps = gpu_check(args.device, Path(args.out), args.dry_run, args.total_s, args.only, args.skip_tests)
    print((Path(args.out) / "summary.txt").read_text())
    return 0 if all(s["status"] == "ok" for s in steps) else 1
