"""Benchmark cases, as data: a name, a mode, sizes per suite and device, providers, a baseline,
and a maker that returns one zero-argument call for (provider, size).

Add a case: write a maker in perf/makers.py, ``make(provider, size, device) -> Callable[[],
object]``, whose call returns the tensors that the correctness check compares (the output, and
the gradient for "fwd+bwd"), and append a :class:`Case` to :data:`CASES`. The runner checks
every provider of a case against the case's ``reference`` provider before timing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from perf import ceilings as CEIL
from perf import providers as P
from perf.makers import (
    ACT_PROVIDERS,
    BJORCK_ITERS,
    PARAMETRIZATION_PROVIDERS,
    LOSS_PROVIDERS,
    OP_PROVIDERS,
    Maker,
    activation,
    make_bjorck,
    make_frobenius,
    make_hkr,
    make_hkr_multiclass,
    make_householder,
    make_parametrization,
    make_power_iteration,
    parametrization_bounded,
    network,
    zoo,
)

__all__ = ["BJORCK_ITERS", "CASES", "Case", "sizes_for"]


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
        name: unique name, e.g. "bjorck".
        group: "ceiling", "op", "activation", "loss", "network" or "zoo" (torchvision models: convert,
            initialize, certify; mode "setup").
        mode: "fwd", "fwd+bwd", "train-step" or "eval".
        sizes: suite -> device -> list of sizes (a width, a shape tuple, or a named set).
        providers: provider names; compiled ones end with "-compiled".
        baseline: the provider that ratios are taken against.
        reference: the provider whose output the correctness check compares to (None: the
            maker's own check, see ``check``).
        make: the maker (see module docstring).
        compile_max: largest size (int) at which compiled providers run (compile time).
        check: optional ``check(provider, size, device) -> bool`` replacing the comparison.
        shape_of: size -> recorded shape string.
        dtype: "float32", or "bfloat16" / "float16" for cases that run under autocast (recorded
            in the rows' ``dtype``).
    """

    name: str
    group: str
    mode: str
    sizes: dict[str, dict[str, list]]
    providers: list[str]
    baseline: str
    make: Maker
    reference: str | None = "torch-ref"
    compile_max: int | None = None
    check: Callable[[str, object, str], bool] | None = None
    shape_of: Callable[[object], str] = field(default=lambda s: str(s))
    dtype: str = "float32"


def sizes_for(case: Case, suite: str, device: str) -> list:
    """Sizes of ``case`` in ``suite`` ("tiny", "quick", "full") on ``device``."""
    per = case.sizes.get(suite, case.sizes["quick"])
    return per.get(device, per["cpu"])


def _widths(tiny: list, quick: list, cpu: list, cuda: list) -> dict[str, dict[str, list]]:
    return {"tiny": {"cpu": tiny}, "quick": {"cpu": quick}, "full": {"cpu": cpu, "cuda": cuda}}


_W_ALL = [32, 64, 128, 256, 512, 1024, 2048, 4096]
_ACT_SHAPES = _widths(
    [(2, 8, 4, 4)],
    [(64, 32, 28, 28)],
    [(64, 32, 28, 28), (128, 128, 16, 16)],
    [(64, 32, 28, 28), (128, 128, 16, 16), (256, 256, 32, 32)],
)
_LOSS_N = _widths([8], [1024], [1024, 65536], [1024, 65536, 1 << 20])
# networks: (batch, image side, first width)
# (quick: network (a) training step only, at 16x16 inputs: liptriton's setup converges every
# conv operator norm, which takes most of a minute at 28x28 on a shared CPU)
_NET = {
    "a": _widths([(2, 8, 4)], [(64, 16, 32)], [(64, 28, 32)], [(64, 28, 32)]),
    "b": _widths([(2, 8, 4)], [], [(128, 32, 32)], [(128, 32, 32)]),
}
# torchvision zoo: (model, image side, batch); full: issue 17's targets (ResNet-50 at 224, batch 8)
_ZOO = _widths([("squeezenet1_1", 32, 2)], [("resnet18", 64, 8)], [("resnet18", 64, 8), ("resnet50", 224, 8)],
               [("resnet50", 224, 8)])
# network (c), the drop-in layer-class network: 8x8 inputs, batch 64, first width 16
_NET_C = _widths([(2, 8, 4)], [(64, 8, 16)], [(64, 8, 16)], [(64, 8, 16)])
# network (b) under bf16 autocast: CUDA only (issue 15's target: batch 256, compiled)
_NET_B_BF16 = {"tiny": {"cpu": [(2, 8, 4)]}, "quick": {"cpu": []}, "full": {"cpu": [], "cuda": [(256, 32, 32)]}}
_NET_EVAL = {
    "a": _widths([(2, 8, 4)], [], [(64, 28, 32)], [(64, 28, 32)]),
    "b": _widths([(2, 8, 4)], [], [(128, 32, 32)], [(128, 32, 32)]),
}

NET_PROVIDERS = P.NET_PROVIDERS
EVAL_PROVIDERS = [p for p in NET_PROVIDERS if p != "unconstrained-relu"]

CASES: list[Case] = [
    Case(
        "copy",
        "ceiling",
        "fwd",
        _widths([1 << 10], [1 << 22], [1 << 24], [1 << 28]),
        ["torch"],
        "torch",
        CEIL.make_copy,
        reference=None,
    ),
    Case(
        "matmul",
        "ceiling",
        "fwd",
        _widths([16], [256], [1024], [4096, 8192]),
        CEIL.MATMUL_PROVIDERS,
        "torch-fp32",
        CEIL.make_matmul,
        reference=None,
    ),
    Case(
        "power_iteration",
        "op",
        "fwd",
        _widths([8], [64, 256], [32, 128, 512, 1024], _W_ALL),
        OP_PROVIDERS,
        "torch-ref",
        make_power_iteration,
        compile_max=1024,
    ),
    Case(
        "bjorck",
        "op",
        "fwd+bwd",
        _widths([8], [64, 256], [32, 128, 512], _W_ALL),
        OP_PROVIDERS,
        "torch-ref",
        make_bjorck,
        compile_max=512,
    ),
    Case(
        "frobenius",
        "op",
        "fwd+bwd",
        _widths([8], [64, 256], [32, 128, 512, 1024], _W_ALL),
        OP_PROVIDERS,
        "torch-ref",
        make_frobenius,
        compile_max=1024,
    ),
    Case(
        "householder",
        "op",
        "fwd+bwd",
        _widths([8], [32, 64], [32, 64, 128, 256], _W_ALL[:5]),
        OP_PROVIDERS,
        "torch-ref",
        make_householder,
        compile_max=32,
    ),
    Case(  # AOL beside Spectral and Björck: a layer's training-mode weight, forward and backward
        "parametrization",
        "op",
        "fwd+bwd",
        _widths([8, (2, 3, 4)], [256, (32, 3, 16)], [256, 1024, (32, 3, 16), (64, 3, 32)],
                [256, 1024, 4096, (64, 3, 32), (256, 3, 16)]),
        PARAMETRIZATION_PROVIDERS,
        "spectral",
        make_parametrization,
        reference=None,
        check=parametrization_bounded,
    ),
    Case(
        "groupsort2", "activation", "fwd+bwd", _ACT_SHAPES, ACT_PROVIDERS, "relu", activation("groupsort2")
    ),
    Case("maxmin", "activation", "fwd+bwd", _ACT_SHAPES, ACT_PROVIDERS, "relu", activation("maxmin")),
    Case("hkr", "loss", "fwd+bwd", _LOSS_N, LOSS_PROVIDERS, "torch-ref", make_hkr),
    Case("hkr_multiclass", "loss", "fwd+bwd", _LOSS_N, LOSS_PROVIDERS, "torch-ref", make_hkr_multiclass),
    Case(
        "net_a",
        "network",
        "train-step",
        _NET["a"],
        NET_PROVIDERS,
        "unconstrained-compiled",
        network("a", "train-step"),
        reference=None,
    ),
    Case(
        "net_b",
        "network",
        "train-step",
        _NET["b"],
        NET_PROVIDERS,
        "unconstrained-compiled",
        network("b", "train-step"),
        reference=None,
    ),
    Case(
        "net_c",
        "network",
        "train-step",
        _NET_C,
        P.NET_C_PROVIDERS,
        "unconstrained",
        network("c", "train-step"),
        reference=None,
    ),
    Case(
        "net_b_bf16",
        "network",
        "train-step",
        _NET_B_BF16,
        NET_PROVIDERS,
        "unconstrained-compiled",
        network("b", "train-step", "bfloat16"),
        reference=None,
        dtype="bfloat16",
    ),
    Case(
        "net_a_eval",
        "network",
        "eval",
        _NET_EVAL["a"],
        EVAL_PROVIDERS,
        "unconstrained-compiled",
        network("a", "eval"),
        reference=None,
    ),
    Case(
        "net_b_eval",
        "network",
        "eval",
        _NET_EVAL["b"],
        EVAL_PROVIDERS,
        "unconstrained-compiled",
        network("b", "eval"),
        reference=None,
    ),
    *[
        Case(f"zoo_{stage}", "zoo", "setup", _ZOO, ["liptriton"], "liptriton", zoo(stage), reference=None,
             shape_of=lambda s: f"{s[0]} {s[1]}x{s[1]} batch {s[2]}")
        for stage in ("convert", "initialize", "certify")
    ],
]
