"""``python -m perf plot``: charts into docs/ and docs/perf.md (method, targets, latest table).

Charts: ``docs/perf_history_<device>.png`` (per case, the ratio of the best liptriton provider
to the case's baseline over the recorded runs) and ``docs/perf_speedup_<device>.png`` (latest
run, per case at its largest shape: time of each provider / time of the best liptriton
provider; > 1 means liptriton is faster).
"""

from __future__ import annotations

import math
from pathlib import Path

from perf.compare import load, ratios, runs
from perf.run import history_path

__all__ = ["plot", "render_markdown", "targets"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _med(rows: dict, case: str, shape: str, provider: str, key: str = "median_ms") -> float:
    r = rows.get((case, shape, provider))
    if r is None or r.get(key) is None or not r.get("correct", False):
        return math.nan
    return float(r[key])


def _first_shape(rows: dict, case: str) -> str | None:
    shapes = [k[1] for k in rows if k[0] == case]
    return shapes[0] if shapes else None


def targets(run_rows: list[dict]) -> list[dict]:
    """The targets of issues 7, 2 and 12 with their measured values in one run (CPU ratios)."""
    r = ratios(run_rows)
    out = []

    def add(name: str, value: float, op: str, limit: float, how: str) -> None:
        met = (
            None if math.isnan(value) or op == "info" else (value >= limit if op == ">=" else value <= limit)
        )
        out.append({"target": name, "measured": value, "op": op, "limit": limit, "met": met, "how": how})

    sa = _first_shape(r, "net_a")
    if sa:
        lc = _med(r, "net_a", sa, "liptriton-compiled")
        add(
            "net (a) train step: speed-up vs deel-torchlip (issue 7)",
            _med(r, "net_a", sa, "deel-torchlip") / lc,
            ">=",
            3.0,
            "deel-torchlip eager / liptriton compiled",
        )
        add(
            "net (a) train step: speed-up vs deel-torchlip (issue 2)",
            _med(r, "net_a", sa, "deel-torchlip") / lc,
            ">=",
            2.0,
            "deel-torchlip eager / liptriton compiled",
        )
        add(
            "net (a) train step vs unconstrained",
            lc / _med(r, "net_a", sa, "unconstrained-compiled"),
            "<=",
            1.3,
            "liptriton compiled / unconstrained compiled (GroupSort2)",
        )
        relu = _med(r, "net_a", sa, "unconstrained-relu")
        add(
            "context: net (a) deel-torchlip step / ReLU network step",
            _med(r, "net_a", sa, "deel-torchlip") / relu,
            "info",
            math.nan,
            "issue 7 measured 2.9",
        )
        add(
            "context: net (a) GroupSort2 network / ReLU network (eager)",
            _med(r, "net_a", sa, "unconstrained") / relu,
            "info",
            math.nan,
            "issue 7 measured 1.8",
        )
    sg = _first_shape(r, "groupsort2")
    if sg:
        add(
            "GroupSort2 fwd+bwd vs ReLU (eager)",
            _med(r, "groupsort2", sg, "liptriton") / _med(r, "groupsort2", sg, "relu"),
            "<=",
            1.2,
            f"liptriton eager / relu eager, {sg}",
        )
        add(
            "GroupSort2 fwd+bwd vs ReLU (compiled)",
            _med(r, "groupsort2", sg, "liptriton-compiled") / _med(r, "groupsort2", sg, "relu-compiled"),
            "<=",
            1.2,
            f"liptriton compiled / relu compiled, {sg}",
        )
    for net in ("a", "b"):
        s = _first_shape(r, f"net_{net}_eval")
        if not s:
            continue
        for mode, lp, up in (
            ("eager", "liptriton", "unconstrained"),
            ("compiled", "liptriton-compiled", "unconstrained-compiled"),
        ):
            v = _med(r, f"net_{net}_eval", s, lp) / _med(r, f"net_{net}_eval", s, up)
            add(
                f"net ({net}) eval forward vs unconstrained, {mode} (issue 7: 1.05, issue 2: 1.1)",
                v,
                "<=",
                1.05,
                f"{lp} / {up}",
            )
    sb = _first_shape(r, "net_b")
    if sb:
        add(
            "net (b) train step peak memory vs unconstrained",
            _med(r, "net_b", sb, "liptriton-compiled", "peak_bytes")
            / _med(r, "net_b", sb, "unconstrained-compiled", "peak_bytes"),
            "<=",
            1.5,
            "liptriton compiled / unconstrained compiled, torch profiler allocation events (CPU)",
        )
        add(
            "net (b) train step vs unconstrained",
            _med(r, "net_b", sb, "liptriton-compiled") / _med(r, "net_b", sb, "unconstrained-compiled"),
            "<=",
            1.3,
            "liptriton compiled / unconstrained compiled",
        )
    sc = _first_shape(r, "net_c")
    if sc:
        add(
            "net (c) eager train step: speed-up vs deel-torchlip eager (issue 12 item 6)",
            _med(r, "net_c", sc, "deel-torchlip") / _med(r, "net_c", sc, "liptriton"),
            ">=",
            1.5,
            "deel-torchlip eager / liptriton eager (layer classes, drop-in import)",
        )
    return out


def _limit(t: dict) -> str:
    return "-" if t["op"] == "info" else f"{t['op']} {t['limit']}"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def latest_table(run_rows: list[dict]) -> str:
    """Markdown table of one run: median, ratio to the baseline, setup time, peak memory, check."""
    lines = [
        "| case | mode | shape | provider | median ms | ratio to baseline | setup s | peak MB | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (case, shape, prov), r in ratios(run_rows).items():
        peak = None if r.get("peak_bytes") is None else r["peak_bytes"] / 2**20
        check = "error" if r.get("error") else ("pass" if r["correct"] else "FAIL")
        ratio = f"{_fmt(r['ratio'])} (vs {r['baseline']})" if r["correct"] else "refused (check failed)"
        lines.append(
            f"| {case} | {r['mode']} | {shape} | {prov} | {_fmt(r['median_ms'])} | {ratio} | "
            f"{_fmt(r.get('setup_s'))} | {_fmt(peak)} | {check} |"
        )
    return "\n".join(lines)


def _charts(device: str, all_runs: list[tuple[str, list[dict]]], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    latest = ratios(all_runs[-1][1])
    cases = list(dict.fromkeys(k[0] for k in latest))
    # history: best liptriton ratio per case (largest shape) over runs
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for case in cases:
        ys = []
        for _, rows in all_runs:
            rr = ratios(rows)
            shapes = [k[1] for k in rr if k[0] == case]
            if not shapes:
                ys.append(math.nan)
                continue
            vals = [
                rr[(case, shapes[-1], p)]["ratio"]
                for p in ("liptriton", "liptriton-compiled")
                if (case, shapes[-1], p) in rr and rr[(case, shapes[-1], p)]["correct"]
            ]
            ys.append(min(vals) if vals else math.nan)
        ax.plot(range(len(ys)), ys, marker="o", label=case)
    ax.set_xlabel("run (oldest to newest)")
    ax.set_ylabel("liptriton time / baseline time")
    ax.set_yscale("log")
    ax.set_title(f"History ({device}): best liptriton provider vs the case baseline, largest shape")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    name = f"perf_history_{device}.png"
    fig.savefig(docs / name, dpi=90)
    plt.close(fig)
    names.append(name)
    # speed-up of the best liptriton provider against each other provider, latest run
    fig, ax = plt.subplots(figsize=(11, 4.5))
    providers = list(dict.fromkeys(k[2] for k in latest if not k[2].startswith("liptriton")))
    width = 0.8 / max(1, len(providers))
    for j, prov in enumerate(providers):
        xs, ys = [], []
        for i, case in enumerate(cases):
            shape = [k[1] for k in latest if k[0] == case][-1]
            lip = [
                latest[(case, shape, p)]["median_ms"]
                for p in ("liptriton", "liptriton-compiled")
                if (case, shape, p) in latest and latest[(case, shape, p)]["correct"]
            ]
            other = latest.get((case, shape, prov))
            if lip and other and not math.isnan(other["median_ms"]):
                xs.append(i + j * width)
                ys.append(other["median_ms"] / min(lip))
        ax.bar(xs, ys, width, label=prov)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([i + 0.4 for i in range(len(cases))], cases, rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("provider time / best liptriton time")
    ax.set_title(f"Speed-up of liptriton against each provider ({device}, latest run, largest shape)")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    name = f"perf_speedup_{device}.png"
    fig.savefig(docs / name, dpi=90)
    plt.close(fig)
    names.append(name)
    return names


def render_markdown(sections: dict[str, tuple[list[dict], list[str]]]) -> str:
    """docs/perf.md: the method and notes (perf/NOTES.md), then per device targets, table, charts."""
    notes = (Path(__file__).resolve().parent / "NOTES.md").read_text()
    parts = [notes.rstrip(), ""]
    for device, (run_rows, charts) in sections.items():
        env = run_rows[0]
        parts += [
            f"## Latest {device} run" if "partial" not in device else f"## {device}",
            "",
            (
                f"Run `{env['run_id']}` on {env['device_name']}, torch {env['torch']}, "
                f"triton {env['triton']}, commit {env['commit']}, suite {env['suite']}."
            ),
            "",
            "### Targets (ratios within this run)",
            "",
            "| target | measured | target | met | how |",
            "|---|---|---|---|---|",
        ]
        for t in targets(run_rows):
            met = "-" if t["met"] is None else ("yes" if t["met"] else "**no**")
            parts.append(f"| {t['target']} | {_fmt(t['measured'])} | {_limit(t)} | {met} | {t['how']} |")
        if charts:
            parts += ["", "### Charts", ""] + [f"![{c}]({c})" for c in charts]
        parts += ["", "### Table", "", latest_table(run_rows), ""]
    return "\n".join(parts) + "\n"


def plot(
    devices: tuple[str, ...] = ("cpu", "cuda"),
    suite: str | None = None,
    docs: Path = DOCS,
    history: dict[str, Path] | None = None,
) -> list[Path]:
    """Write the charts and docs/perf.md from the histories of ``devices``; return the written paths.

    Args:
        devices: devices whose history to draw (missing histories are skipped).
        suite: draw only runs of this suite (default: runs of the newest run's suite).
        docs: output folder (default the repository's docs/).
        history: device -> history file (default perf/history/<device>.jsonl).
    """
    docs = Path(docs)
    docs.mkdir(exist_ok=True)
    sections, written = {}, []
    for device in devices:
        all_runs = runs(load((history or {}).get(device, history_path(device))))
        if not all_runs:
            continue
        wanted = suite or all_runs[-1][1][0]["suite"]
        all_runs = [(k, v) for k, v in all_runs if v[0]["suite"] == wanted]
        # the main run: the newest one that covers most cases; newer partial runs follow it
        most = max(len({r["case"] for r in v}) for _, v in all_runs)
        main = max(i for i, (_, v) in enumerate(all_runs) if 2 * len({r["case"] for r in v}) >= most)
        charts = _charts(device, all_runs[: main + 1], docs)
        written += [docs / c for c in charts]
        sections[device] = (all_runs[main][1], charts)
        for j, (_, v) in enumerate(all_runs[main + 1 :]):
            sections[f"{device} (later partial run {j + 1})"] = (v, [])
    (docs / "perf.md").write_text(render_markdown(sections))
    written.append(docs / "perf.md")
    return written
