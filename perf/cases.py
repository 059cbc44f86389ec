"""Benchmark cases, as data: a name, a mode, sizes per suite and device, providers, a baseline,
and a maker that returns one zero-argument call for (provider, size).

Add a case: write a maker ``make(provider, size, device) -> Callable[[], object]`` whose call
returns the tensors that the correctness check compares (the output, and the gradient for
"fwd+bwd"), and append a :class:`Case` to :data:`CASES`. The runner checks every provider of a
case against the case's ``reference`` provider at the smallest size before timing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

import liptriton
from liptriton import ops
from perf import ceilings as CEIL
from perf import providers as P

__all__ = ["CASES", "Case", "sizes_for"]

Maker = Callable[[str, object, str], Callable[[], object]]


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
        name: unique name, e.g. "bjorck".
        group: "ceiling", "op", "activation", "loss" or "network".
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


def _compiled(fn: Callable, provider: str) -> Callable:
    return torch.compile(fn, fullgraph=True, dynamic=False) if provider.endswith("-compiled") else fn


def _fwd_bwd(fn: Callable[[Tensor], Tensor], w: Tensor) -> Callable[[], tuple[Tensor, Tensor]]:
    w = w.detach().requires_grad_(True)
    g = torch.randn_like(fn(w.detach()))

    def call() -> tuple[Tensor, Tensor]:
        out = fn(w)
        (grad,) = torch.autograd.grad(out, w, g)
        return out.detach(), grad

    return call


OP_PROVIDERS = ["liptriton", "liptriton-compiled", "torch-ref", "torch-ref-compiled"]


def _op_fn(provider: str, lip: Callable, ref: Callable) -> Callable:
    return _compiled(ref if provider.startswith("torch-ref") else lip, provider)


def _unit_spectral(n: int, m: int | None, device: str) -> Tensor:
    w = torch.randn(n, m or n, device=device)
    return w / torch.linalg.matrix_norm(w, 2) * 0.99


def make_power_iteration(provider: str, n: int, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    w, u, v = torch.randn(n, n, device=device), torch.randn(n, device=device), torch.randn(n, device=device)
    fn = _op_fn(
        provider,
        lambda w, u, v: ops.power_iteration(w, u, v, 3),
        lambda w, u, v: ops.power_iteration_reference(w, u, v, 3),
    )
    return lambda: fn(w, u, v)


BJORCK_ITERS = 15  # Björck steps of the op cases (the flop count of the GPU summary uses it too)


def make_bjorck(provider: str, n: int | tuple[int, int], device: str) -> Callable[[], object]:
    """Björck forward + backward of an n x n weight, or of an (m, n) one when ``n`` is a tuple."""
    torch.manual_seed(0)
    fn = _op_fn(
        provider, lambda w: ops.bjorck(w, BJORCK_ITERS), lambda w: ops.bjorck_reference(w, BJORCK_ITERS)
    )
    m, k = n if isinstance(n, tuple) else (n, None)
    return _fwd_bwd(fn, _unit_spectral(m, k, device))


def make_frobenius(provider: str, n: int, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    fn = _op_fn(provider, ops.frobenius_normalize, ops.frobenius_normalize_reference)
    return _fwd_bwd(fn, torch.randn(n, n, device=device))


def make_householder(provider: str, n: int, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    fn = _op_fn(
        provider,
        lambda v: ops.householder_product(v, n, n),
        lambda v: ops.householder_product_reference(v, n, n),
    )
    return _fwd_bwd(fn, torch.randn(n, n, device=device))


# Weight sets (smaller side first) of the whole-network cases, as (rows, cols) matrices.
WEIGHT_SETS = {
    "tiny": [(4, 9), (4, 36), (1, 16)],
    "net-a": [(32, 9), (32, 288), (32, 288), (32, 288), (256, 1568), (1, 256)],
    "net-b": [(32, 27)]
    + [(32, 288)] * 2
    + [(64, 288)]
    + [(64, 576)] * 2
    + [(128, 576)]
    + [(128, 1152)] * 2
    + [(10, 128)],
}


def make_bjorck_grouped(provider: str, name: str, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    ws = [_unit_spectral(m, n, device).requires_grad_(True) for m, n in WEIGHT_SETS[name]]
    fn = _op_fn(
        provider,
        lambda ws: ops.bjorck_grouped(ws, BJORCK_ITERS),
        lambda ws: ops.bjorck_grouped_reference(ws, BJORCK_ITERS),
    )
    gs = [torch.randn_like(w) for w in ws]

    def call() -> tuple[Tensor, ...]:
        outs = fn(ws)
        grads = torch.autograd.grad(outs, ws, gs)
        return (*[o.detach() for o in outs], *grads)

    return call


ACT_PROVIDERS = ["liptriton", "liptriton-compiled", "torch-ref", "deel-torchlip", "relu", "relu-compiled"]


def _activation(kind: str) -> Callable[[str, tuple, str], Callable[[], object]]:
    def make(provider: str, shape: tuple, device: str) -> Callable[[], object]:
        torch.manual_seed(0)
        x = torch.randn(*shape, device=device)
        if provider.startswith("relu"):
            fn = torch.relu
        elif provider == "deel-torchlip":
            from deel import torchlip

            fn = torchlip.GroupSort2() if kind == "groupsort2" else torchlip.MaxMin()
        elif provider == "torch-ref":
            fn = (
                (lambda t: ops.group_sort_reference(t, 2, 1))
                if kind == "groupsort2"
                else (lambda t: ops.max_min_reference(t, 1))
            )
        else:
            fn = liptriton.GroupSort2() if kind == "groupsort2" else liptriton.MaxMin()
        return _fwd_bwd(_compiled(fn, provider), x)

    return make


LOSS_PROVIDERS = ["liptriton", "liptriton-compiled", "torch-ref", "deel-torchlip"]


def make_hkr(provider: str, n: int, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    x = torch.randn(n, 1, device=device)
    y = (torch.arange(n, device=device) % 2).float().unsqueeze(1) * 2 - 1
    if provider == "deel-torchlip":
        from deel import torchlip

        fn = torchlip.HKRLoss(alpha=0.9, min_margin=1.0)
    else:
        fn = liptriton.HKRLoss(alpha=0.9, min_margin=1.0)
    loss = _compiled(lambda t: fn(t, y), provider)
    inner = _fwd_bwd(loss, x)

    def call() -> object:
        with P.provider_context(provider):
            return inner()

    return call


def make_hkr_multiclass(provider: str, n: int, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    x = torch.randn(n, 10, device=device)
    y = torch.nn.functional.one_hot(torch.arange(n, device=device) % 10, 10).float()
    if provider == "deel-torchlip":
        from deel import torchlip

        fn = torchlip.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)
    else:
        fn = liptriton.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)
    loss = _compiled(lambda t: fn(t, y), provider)
    inner = _fwd_bwd(loss, x)

    def call() -> object:
        with P.provider_context(provider):
            return inner()

    return call


def _network(name: str, mode: str, dtype: str = "float32") -> Maker:
    def make(provider: str, size: tuple[int, int, int], device: str) -> Callable[[], object]:
        batch, image, width = size
        maker = P.make_step if mode == "train-step" else P.make_eval
        fn, net = maker(name, provider, batch, device=device, dtype=dtype, image=image, width=width)
        fn.module = net  # the runner checks that every weight got a gradient
        return fn

    return make


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
    Case(
        "bjorck_grouped",
        "op",
        "fwd+bwd",
        _widths(["tiny"], ["net-a"], ["net-a", "net-b"], ["net-a", "net-b"]),
        OP_PROVIDERS,
        "torch-ref",
        make_bjorck_grouped,
    ),
    Case(
        "groupsort2", "activation", "fwd+bwd", _ACT_SHAPES, ACT_PROVIDERS, "relu", _activation("groupsort2")
    ),
    Case("maxmin", "activation", "fwd+bwd", _ACT_SHAPES, ACT_PROVIDERS, "relu", _activation("maxmin")),
    Case("hkr", "loss", "fwd+bwd", _LOSS_N, LOSS_PROVIDERS, "torch-ref", make_hkr),
    Case("hkr_multiclass", "loss", "fwd+bwd", _LOSS_N, LOSS_PROVIDERS, "torch-ref", make_hkr_multiclass),
    Case(
        "net_a",
        "network",
        "train-step",
        _NET["a"],
        NET_PROVIDERS,
        "unconstrained-compiled",
        _network("a", "train-step"),
        reference=None,
    ),
    Case(
        "net_b",
        "network",
        "train-step",
        _NET["b"],
        NET_PROVIDERS,
        "unconstrained-compiled",
        _network("b", "train-step"),
        reference=None,
    ),
    Case(
        "net_c",
        "network",
        "train-step",
        _NET_C,
        P.NET_C_PROVIDERS,
        "unconstrained",
        _network("c", "train-step"),
        reference=None,
    ),
    Case(
        "net_b_bf16",
        "network",
        "train-step",
        _NET_B_BF16,
        NET_PROVIDERS,
        "unconstrained-compiled",
        _network("b", "train-step", "bfloat16"),
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
        _network("a", "eval"),
        reference=None,
    ),
    Case(
        "net_b_eval",
        "network",
        "eval",
        _NET_EVAL["b"],
        EVAL_PROVIDERS,
        "unconstrained-compiled",
        _network("b", "eval"),
        reference=None,
    ),
]
