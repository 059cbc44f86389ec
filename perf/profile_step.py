"""Where one training step's time and FLOPs go (issue 12, "count first"), for the networks of
perf/providers.py, eager.

    python -m perf.profile_step [--net a b c] [--provider liptriton unconstrained] [--steps 3]
                                [--ops N] [--threads 1]

Parts of a step: zero_grad, the network's own forward and backward (everything that is not a
parametrization), each parametrization's forward (the weight it computes) and backward, the
power-iteration state updates that run inside a parametrization's forward (any method of a
sub-module of the parametrization, e.g. ``state.norm``), and the optimizer step.

Time: ``torch.profiler`` (CPU activity) over ``--steps`` steps after two warm-up steps; a
part's time is the minimum over the steps (on a shared machine other jobs only ever add time;
the minima of the parts need not add up to the minimum step exactly). Forward parts are
``record_function`` ranges opened by hooks on each ``ParametrizationList`` and by wrappers
around the state methods; backward parts are the top-level
``autograd::engine::evaluate_function`` events, assigned to the parametrization whose forward
created their autograd node (matched by sequence number; nodes created during the backward,
e.g. by a recomputing custom Function, belong to the node that runs them).

FLOPs: one more step under a dispatch mode that counts every op with the formulas of
``torch.utils.flop_counter`` (matmuls and convolutions, forward and backward) and assigns them
to the same parts (backward: by the autograd node that is running).

Nothing here knows a parametrization by name, so it measures whatever the library does; only
the floor column does: for a parametrization whose class name contains "bjorck", on an m x n
weight (m <= n, convolutions reshaped to C_out x C_in k^2), one Gram product and one
application forward (4 m^2 n FLOPs) and their transposes backward (4 m^2 n); the step's floor
adds the network's own FLOPs.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from perf.providers import make_step

__all__ = ["profile_network"]

_NET = "network"
_EVAL = "autograd::engine::evaluate_function: "


class _Tracker:
    """Hooks that name the part of the step running now, and the autograd nodes of each part."""

    def __init__(self, net: nn.Module) -> None:
        self.stack: list[str] = []
        self.node_part: dict[int, str] = {}  # autograd sequence number -> part
        self.handles: list = []
        self.patched: list[tuple[nn.Module, str]] = []
        self.labels: list[str] = []
        self.floor: dict[str, float] = {}  # label -> Björck floor FLOPs of one direction (4 m^2 n)
        for path, mod in net.named_modules():
            if not parametrize.is_parametrized(mod):
                continue
            for tensor, plist in mod.parametrizations.items():
                kinds = "+".join(type(p).__name__ for p in plist)
                label = f"{path}.{tensor} ({kinds})"
                self.labels.append(label)
                if any("bjorck" in type(p).__name__.lower() for p in plist):
                    m, n = sorted(plist.original.flatten(1).shape)
                    self.floor[label] = 4.0 * m * m * n  # Gram (2 m^2 n) + application (2 m^2 n)
                self.handles.append(plist.register_forward_pre_hook(self._enter(f"param:{label}")))
                self.handles.append(plist.register_forward_hook(self._leave(f"param:{label}")))
                for p in plist:
                    for child in p.children():
                        self._patch(child, f"state:{label}")

    def _enter(self, part: str) -> Callable:
        def hook(mod, args):
            self.stack.append(part)
            mod._profile_range = record_function(part)
            mod._profile_range.__enter__()

        return hook

    def _leave(self, part: str) -> Callable:
        def hook(mod, args, out):
            mod._profile_range.__exit__(None, None, None)
            self.stack.pop()
            if isinstance(out, torch.Tensor) and out.grad_fn is not None:
                self._claim(out.grad_fn, part.removeprefix("param:"))

        return hook

    def _patch(self, child: nn.Module, part: str) -> None:
        for name, fn in vars(type(child)).items():
            if name.startswith("_") or not callable(fn) or isinstance(fn, (staticmethod, classmethod, type)):
                continue
            bound = getattr(child, name)

            def wrapper(*args, _bound=bound, **kwargs):
                if self.stack and self.stack[-1] == part:  # nested state call: already inside
                    return _bound(*args, **kwargs)
                self.stack.append(part)
                try:
                    with record_function(part):
                        return _bound(*args, **kwargs)
                finally:
                    self.stack.pop()

            object.__setattr__(child, name, wrapper)
            self.patched.append((child, name))

    def _claim(self, root, part: str) -> None:
        todo = [root]
        while todo:
            node = todo.pop()
            if node is None or type(node).__name__ == "AccumulateGrad":
                continue
            seq = node._sequence_nr()
            if seq in self.node_part:
                continue
            self.node_part[seq] = part
            todo += [f for f, _ in node.next_functions]

    def claim_network(self, loss: torch.Tensor) -> None:
        """Every node of the step's graph that no parametrization claimed is the network's."""
        self._claim(loss.grad_fn, _NET)

    def current(self) -> str:
        """The part running now (forward: the hook stack; backward: the running autograd node)."""
        node = torch._C._current_autograd_node()
        if node is not None:
            part = self.node_part.get(node._sequence_nr())
            if part is not None:
                self.last_backward = part
                return f"bwd:{part}"
            return f"bwd:{getattr(self, 'last_backward', _NET)}"
        return self.stack[-1] if self.stack else f"fwd:{_NET}"

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for child, name in self.patched:
            del child.__dict__[name]


class _FlopCount(TorchDispatchMode):
    def __init__(self, tracker: _Tracker) -> None:
        super().__init__()
        self.tracker, self.phase = tracker, "step"
        self.flops: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            part = self.tracker.current() if self.phase in ("forward", "backward") else f"step:{self.phase}"
            self.flops[part] += int(formula(*args, **kwargs, out_val=out))
        return out


def _step_parts(net: nn.Module, opt: torch.optim.Optimizer, body: Callable, tracker: _Tracker, counter=None):
    def phase(name: str):
        if counter is not None:
            counter.phase = name
        return record_function(f"step:{name}")

    with phase("zero_grad"):
        opt.zero_grad(set_to_none=True)
    with phase("forward"):
        loss = body()
    tracker.claim_network(loss)
    with phase("backward"):
        loss.backward()
    with phase("optimizer"):
        opt.step()


def _times(prof, tracker: _Tracker) -> dict[str, float]:
    """Milliseconds per part of one profiled step."""
    ms: dict[str, float] = defaultdict(float)
    events = prof.events()
    for e in events:
        dur = (e.time_range.end - e.time_range.start) / 1e3
        if e.name.startswith(("step:", "param:", "state:")):
            ms[e.name] += dur
        elif e.name.startswith(_EVAL):
            parent, nested = e.cpu_parent, False
            while parent is not None:
                nested = nested or parent.name.startswith(_EVAL)
                parent = parent.cpu_parent
            if not nested:
                ms[f"bwd:{tracker.node_part.get(e.sequence_nr, _NET)}"] += dur
    return ms


def _part_of(e, tracker: _Tracker) -> str | None:
    """The part an event's self time belongs to (its innermost enclosing part range)."""
    node, top_eval = e, None
    while node is not None:
        if node.name.startswith(("state:", "param:")):
            return node.name
        if node.name.startswith(_EVAL):
            top_eval = node
        if node.name.startswith("step:"):
            if top_eval is not None:
                return f"bwd:{tracker.node_part.get(top_eval.sequence_nr, _NET)}"
            return f"fwd:{_NET}" if node.name == "step:forward" else node.name
        node = node.cpu_parent
    return None


def _ops(prof, tracker: _Tracker, out: dict[str, dict[str, float]], steps: int) -> None:
    """Add each op's self time (ms, averaged over ``steps``) to ``out[part][op]``."""
    for e in prof.events():
        part = _part_of(e, tracker)
        if part is not None and not e.name.startswith(("step:", "param:", "state:")):
            out.setdefault(part, defaultdict(float))[e.name] += e.self_cpu_time_total / 1e3 / steps


def profile_network(
    name: str, provider: str, steps: int = 3, ops: dict[str, dict[str, float]] | None = None, **sizes
) -> list[dict]:
    """Profile ``steps`` eager training steps of network ``name``; one row per part of a step.

    ``ops``, when given, receives each part's ops and their self time (ms per step).

    Returns:
        Rows ``{"part", "ms", "share", "gflop"}``, the step total first.

    Example:
        >>> rows = profile_network("a", "unconstrained", 1, batch=2, image=8, width=4)
        >>> rows[0]["part"]
        'step (total)'
    """
    step, net = make_step(name, provider, sizes.pop("batch", 64), **sizes)
    opt, fwd_loss = step.optimizer, step.body
    for _ in range(2):
        step()
    plain = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        plain.append((time.perf_counter() - t0) * 1e3)
    tracker = _Tracker(net)
    per_step = []
    try:
        for _ in range(steps):
            tracker.node_part.clear()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                _step_parts(net, opt, fwd_loss, tracker)
            per_step.append(_times(prof, tracker))
            if ops is not None:
                _ops(prof, tracker, ops, steps)
        tracker.node_part.clear()
        counter = _FlopCount(tracker)
        with counter:
            _step_parts(net, opt, fwd_loss, tracker, counter)
    finally:
        tracker.remove()
    return _rows(per_step, counter.flops, tracker.labels, min(plain), tracker.floor)


def _rows(
    per_step: list[dict], flops: dict[str, int], labels: list[str], plain_ms: float, floor: dict[str, float]
) -> list[dict]:
    med = {k: min(s.get(k, 0.0) for s in per_step) for k in set().union(*per_step)}
    total = sum(med.get(f"step:{p}", 0.0) for p in ("zero_grad", "forward", "backward", "optimizer"))
    params_fwd = sum(med.get(f"param:{lb}", 0.0) for lb in labels)
    state_outside = 0.0  # state calls outside a parametrization's forward (e.g. an input hook)
    parts: list[tuple[str, float, int, float | None]] = []
    for lb in labels:
        state = med.get(f"state:{lb}", 0.0)
        fwd = med.get(f"param:{lb}", 0.0)
        own = max(fwd - state, 0.0) if fwd >= state else fwd
        state_outside += 0.0 if fwd >= state else state
        parts += [
            (f"{lb} forward", own, flops.get(f"param:{lb}", 0), floor.get(lb)),
            (f"{lb} state update", state, flops.get(f"state:{lb}", 0), None),
            (f"{lb} backward", med.get(f"bwd:{lb}", 0.0), flops.get(f"bwd:{lb}", 0), floor.get(lb)),
        ]
    net_fwd = med.get("step:forward", 0.0) - params_fwd - state_outside
    net_bwd = med.get("step:backward", 0.0) - sum(med.get(f"bwd:{lb}", 0.0) for lb in labels)
    net_flops = flops.get(f"fwd:{_NET}", 0) + flops.get(f"bwd:{_NET}", 0)
    head = [
        (
            "step (total)",
            total,
            sum(flops.values()),
            (net_flops + 2 * sum(floor.values())) if floor else None,
        ),
        ("network forward (+ loss)", net_fwd, flops.get(f"fwd:{_NET}", 0), None),
        ("network backward", net_bwd, flops.get(f"bwd:{_NET}", 0), None),
        ("zero_grad", med.get("step:zero_grad", 0.0), 0, None),
        ("optimizer step", med.get("step:optimizer", 0.0), flops.get("step:optimizer", 0), None),
    ]
    rows = [
        {
            "part": p,
            "ms": ms,
            "share": ms / total if total else 0.0,
            "gflop": f / 1e9,
            "floor_gflop": None if fl is None else fl / 1e9,
        }
        for p, ms, f, fl in head + parts
    ]
    rows.append(
        {
            "part": "step, unprofiled (min)",
            "ms": plain_ms,
            "share": plain_ms / total,
            "gflop": 0.0,
            "floor_gflop": None,
        }
    )
    return rows


def format_rows(rows: list[dict]) -> str:
    """A markdown table of :func:`profile_network` rows."""
    lines = ["| part | ms | share | GFLOP | floor GFLOP |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        floor = "" if r["floor_gflop"] is None else f"{r['floor_gflop']:.3f}"
        lines.append(
            f"| {r['part']} | {r['ms']:.1f} | {100 * r['share']:.0f} % | {r['gflop']:.3f} | {floor} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile the asked networks and providers; print one markdown table each."""
    parser = argparse.ArgumentParser(prog="python -m perf.profile_step", description=__doc__.split("\n")[0])
    parser.add_argument("--net", nargs="+", default=["a", "b", "c"], choices=["a", "b", "c"])
    parser.add_argument("--provider", nargs="+", default=["liptriton", "unconstrained"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ops", type=int, default=0, help="also list the N costliest ops of each large part")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads (1: steady on a shared, loaded machine)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = {"a": {"batch": 64}, "b": {"batch": 128}, "c": {"batch": 64}}
    for name in args.net:
        for provider in args.provider:
            ops: dict[str, dict[str, float]] = {}
            rows = profile_network(name, provider, args.steps, ops, **sizes[name])
            print(
                f"\n### network ({name}), {provider}, eager, torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads\n"
            )
            print(format_rows(rows), flush=True)
            if args.ops:
                total = rows[0]["ms"]
                print("\nCostliest ops (self time, ms per step) of the parts over 3 % of the step:\n")
                for part, by_op in sorted(ops.items(), key=lambda kv: -sum(kv[1].values())):
                    if sum(by_op.values()) >= 0.03 * total:
                        top = sorted(by_op.items(), key=lambda kv: -kv[1])[: args.ops]
                        print(f"- {part}: " + ", ".join(f"{op} {ms:.1f}" for op, ms in top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
