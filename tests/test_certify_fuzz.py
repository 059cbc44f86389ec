"""Fuzz: certify's upper bound is never below an independent lower bound, on hundreds of
random small models (seeded) built from the operations certify knows; and the same harness
finds the unsound clamp rule of issue 18 when it is put back."""

from __future__ import annotations

import math
import random

import pytest
import torch

import liptriton
import liptriton._fn_rules as rules
from liptriton.certify import CertificateError
from tests._fuzz_graphs import lower_bound, random_program

N_GRAPHS = 200
# the only reasons a generated model may have no finite bound: a quantizing cast or rounding, and a
# write in place into a tensor (the input) that an earlier view still reads
_EXPECTED_INF = ("discontinuous", "writes in place")
_MAXMIN_OPS = {"clamp_min_t", "clamp_both_t", "maximum", "minimum", "max_binary"}


def _violations(programs, climbs: int = 4) -> tuple[list[str], int]:
    """(descriptions of the models whose upper bound is below the measured lower bound, number of finite bounds)."""
    bad, finite = [], 0
    rng = random.Random(1)
    for model, shape in programs:
        x = 2.0 * torch.randn(2, *shape, dtype=torch.float64)
        try:
            cert = liptriton.certify(model, x, n_samples=1, power_iters=2, ascent_steps=0, progress=False)
        except CertificateError as err:  # certify's own measurement exceeded its bound
            bad.append(f"{model.steps}: {err}")
            continue
        unexpected = [why for _, why in cert.unbounded if not any(k in why for k in _EXPECTED_INF)]
        if unexpected:  # e.g. a rule raised on a call form it should know: a bug, even though inf is sound
            bad.append(f"{model.steps}: no bound for an unexpected reason: {unexpected}")
        lower = lower_bound(model, x, rng, climbs=climbs)
        finite += math.isfinite(cert.upper)
        if cert.upper < lower * (1 - 1e-6) - 1e-9:
            bad.append(f"{model.steps}: upper {cert.upper} < lower {lower}\n{cert}")
    return bad, finite


def test_upper_bound_never_below_an_independent_lower_bound():
    rng = random.Random(2026)
    programs = [random_program(rng) for _ in range(N_GRAPHS)]
    bad, finite = _violations(programs)
    assert not bad, "\n\n".join(bad[:3])
    assert finite >= 0.85 * N_GRAPHS, finite  # not vacuous: most models get a finite bound


def test_quantizing_casts_get_no_finite_bound():
    rng = random.Random(5)
    programs = [random_program(rng, quantize=1.0) for _ in range(10)]
    for model, shape in programs:
        cert = liptriton.certify(model, torch.randn(2, *shape, dtype=torch.float64), n_samples=1, power_iters=2,
                                 ascent_steps=0)
        assert cert.upper == math.inf and any("discontinuous" in why for _, why in cert.unbounded), cert


def test_the_fuzz_finds_the_old_unsound_clamp_rule(monkeypatch):
    """With max(La, Lb) for max / min / clamp of two tensors (issue 18's bug), the harness fails."""
    def old_rule(node, ctx, operands, note=""):
        return 1.0, max(ctx.b(a) for a in operands if a is not None), "max(La, Lb) (unsound)"

    def old_clamp(node, ctx):
        return old_rule(node, ctx, [node.args[0], node.kwargs.get("min"), node.kwargs.get("max")])

    monkeypatch.setitem(rules.RULES, torch.clamp, old_clamp)
    monkeypatch.setitem(rules.METHOD_RULES, "clamp", old_clamp)
    for fn in (torch.maximum, torch.minimum, torch.max):
        monkeypatch.setitem(rules.RULES, fn, lambda n, c: old_rule(n, c, list(n.args)))
    rng = random.Random(7)
    programs = [p for p in (random_program(rng) for _ in range(150))
                if any(op in _MAXMIN_OPS for op, _, _ in p[0].steps)]
    bad, _ = _violations(programs)
    assert bad, "the fuzz no longer exercises max / min / clamp of two input-dependent tensors"


@pytest.mark.parametrize("seed", [0, 1])
def test_independent_lower_bound_is_a_lower_bound(seed):
    """The helper's lower bound of a single Linear equals its spectral norm (never above)."""
    rng = random.Random(seed)
    lin = torch.nn.Linear(6, 4).double()
    exact = float(torch.linalg.matrix_norm(lin.weight.detach(), 2))
    lb = lower_bound(lin, torch.randn(2, 6, dtype=torch.float64), rng)
    assert lb == pytest.approx(exact, rel=1e-6) and lb <= exact * (1 + 1e-9)
