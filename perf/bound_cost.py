"""What the training-time guarantee costs: one eager training step of network (a), (b) or (c)
with every Conv2d/Linear constrained by Björck, certified (the default) and ``bound="estimate"``,
next to the unconstrained network and deel-torchlip, timed interleaved in one process.

    python -m perf.bound_cost [a b c] [--batch 64] [--rounds 5] [--threads 1]

Prints the median step time of each provider (ms) and its ratio to the unconstrained step.
Network (c) uses liptriton's layer classes (Spectral*); the others are the plain network with
``liptriton.bjorck`` on every layer (deel-torchlip: its own layer classes).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import liptriton
from perf import providers as P

__all__ = ["bound_cost"]


def _step(name: str, bound: str, batch: int) -> Callable[[], None]:
    provider = {"plain": "unconstrained", "deel": "deel-torchlip"}.get(bound, "unconstrained")
    if name == "c" and bound in ("estimate", "certified"):
        provider = "liptriton"
    torch.manual_seed(0)
    net, x, y = P.build_network(name, provider, batch)
    if bound in ("estimate", "certified") and name != "c":  # (c) is built with liptriton's classes
        for m in list(net.modules()):
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                liptriton.bjorck(m, bound=bound)
        liptriton.parametrizations.initialize(net, x)
    loss_fn = P._loss_fn(name, "deel-torchlip" if bound == "deel" else "liptriton")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    return step


def bound_cost(name: str, batch: int = 64, rounds: int = 5) -> dict[str, float]:
    """Median eager step time (ms) per provider of network ``name``.

    Args:
        name: "a", "b" or "c" (see :mod:`perf.providers`).
        batch: batch size.
        rounds: interleaved rounds (the median is reported).

    Returns:
        ``{"plain": ms, "estimate": ms, "certified": ms, "deel": ms}`` (without "deel" when
        deel-torchlip is not installed; without "estimate" for network (c)).

    Examples:
        >>> times = bound_cost("a", batch=2, rounds=1)  # doctest: +SKIP
    """
    bounds = ["plain", "certified"] + (["estimate"] if name != "c" else []) + (["deel"] if P.has_torchlip() else [])
    steps = {b: _step(name, b, batch) for b in bounds}
    times: dict[str, list[float]] = {b: [] for b in steps}
    for s in steps.values():
        s()
    for _ in range(rounds):
        for b, s in steps.items():
            t = time.perf_counter()
            s()
            times[b].append(time.perf_counter() - t)
    return {b: sorted(v)[len(v) // 2] * 1e3 for b, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("nets", nargs="*", default=["a", "b"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.nets:
        med = bound_cost(name, args.batch, args.rounds)
        cells = ", ".join(f"{b} {v:.1f} ms ({v / med['plain']:.2f}x)" for b, v in med.items())
        print(f"network ({name}), eager, batch {args.batch}, {args.threads} thread(s): {cells}")


if __name__ == "__main__":
    main()
