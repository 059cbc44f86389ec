"""Command line: ``python -m perf run|compare|plot|gpu-check`` (run from the repository root)."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the sub-command; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m perf", description="liptriton benchmarks")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="check, time and append rows to perf/history/<device>.jsonl")
    r.add_argument("--suite", choices=["tiny", "quick", "full"], default="quick")
    r.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    r.add_argument("--case", action="append", help="run only this case (repeatable)")
    r.add_argument("--out", help="history file to append to ('-': none)")
    r.add_argument("--reps", type=int)
    r.add_argument("--run-id", help="join an existing run id (cases run by several invocations)")
    r.add_argument("--size", action="append", help="run only this size, a Python literal (repeatable)")
    r.add_argument("--provider", action="append", help="run only this provider (repeatable)")
    r.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's); on a shared CPU "
                   "one thread per process avoids measuring OpenMP threads waiting for descheduled cores")
    r.add_argument(
        "--interpret",
        action="store_true",
        help="CPU: liptriton's ops run their Triton kernels under the interpreter (needs TRITON_INTERPRET=1)",
    )
    c = sub.add_parser("compare", help="newest run vs a baseline run, on ratios; exit 1 on regression")
    c.add_argument("--base", help="commit (prefix) of the baseline run (default: the previous run)")
    c.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    c.add_argument("--threshold", type=float, default=0.25, help="relative growth of a ratio that fails")
    c.add_argument("--history", help="history file (default perf/history/<device>.jsonl)")
    p = sub.add_parser("plot", help="charts into docs/ and docs/perf.md")
    p.add_argument("--suite", help="draw runs of this suite (default: the newest run's)")
    from perf.gpu_check import add_arguments

    add_arguments(sub.add_parser("gpu-check", help="the one prepared command for a lent GPU machine"))
    args = parser.parse_args(argv)

    if args.cmd == "run":
        from perf.run import run

        out = None if args.out is None else ("-" if args.out == "-" else Path(args.out))
        import contextlib

        import liptriton

        sizes = [ast.literal_eval(s) for s in args.size] if args.size else None
        if args.threads is not None:
            if args.threads < 1:
                parser.error(f"--threads must be >= 1, got {args.threads}")
            import torch

            torch.set_num_threads(args.threads)  # recorded in each row's device_name ("x1 threads")
        with liptriton.config.interpret(True) if args.interpret else contextlib.nullcontext():
            run(args.suite, args.device, args.case, out, args.reps, run_id=args.run_id, providers=args.provider,
                sizes=sizes)
        return 0
    if args.cmd == "gpu-check":
        from perf.gpu_check import main as gpu_check_main

        return gpu_check_main(args)
    if args.cmd == "compare":
        from perf.compare import compare, format_table, load
        from perf.run import history_path

        rows = load(Path(args.history) if args.history else history_path(args.device))
        table, code = compare(rows, args.base, args.threshold)
        if not table:
            print(f"perf compare: no runs recorded for {args.device}")
            return 0
        print(f"new run: {table[0]['new_run']}\nbase run: {table[0]['base_run']}\n")
        print(format_table(table))
        print("\nresult:", "FAIL (regression or failed check)" if code else "ok")
        return code
    from perf.plot import plot

    for path in plot(suite=args.suite):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
