"""perf/profile_step.py: the parts of a training step add up, and the FLOPs it assigns to the
network and to the parametrizations agree with torch's own flop counter run independently."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from perf.profile_step import format_rows, profile_network
from perf.providers import make_step

SIZES = {"batch": 2, "image": 8, "width": 4}


def _step_flops(provider: str) -> int:
    step, _ = make_step("a", provider, **SIZES)
    step()
    with FlopCounterMode(display=False) as fc:
        step()
    return fc.get_total_flops()


def test_parts_add_up_and_flops_match_the_flop_counter():
    rows = {r["part"]: r for r in profile_network("a", "liptriton", 1, **SIZES)}
    total = rows["step (total)"]
    parts = [r for name, r in rows.items() if name not in ("step (total)", "step, unprofiled (min)")]
    assert len(parts) == 4 + 3 * 6  # network fwd/bwd, zero_grad, optimizer; 6 constrained weights x 3
    assert abs(sum(r["ms"] for r in parts) - total["ms"]) <= 0.05 * total["ms"]
    assert sum(r["gflop"] for r in parts) == pytest.approx(total["gflop"], rel=1e-6)
    assert total["gflop"] * 1e9 == pytest.approx(_step_flops("liptriton"), rel=1e-6)
    # the network's own matmuls and convolutions are those of the unconstrained network
    network = rows["network forward (+ loss)"]["gflop"] + rows["network backward"]["gflop"]
    assert network * 1e9 == pytest.approx(_step_flops("unconstrained"), rel=1e-6)
    bjorck = [r for name, r in rows.items() if name.startswith("11.weight") and name.endswith("forward")]
    assert bjorck and bjorck[0]["gflop"] >= bjorck[0]["floor_gflop"] > 0
    assert "| step (total) |" in format_rows(list(rows.values()))


def test_unconstrained_step_has_no_parametrization_parts():
    rows = profile_network("a", "unconstrained", 1, **SIZES)
    assert [r["part"] for r in rows] == [
        "step (total)",
        "network forward (+ loss)",
        "network backward",
        "zero_grad",
        "optimizer step",
        "step, unprofiled (min)",
    ]
    assert torch.isfinite(torch.tensor([r["ms"] for r in rows])).all()
