"""The makers of the benchmark cases: ``make(provider, size, device) -> call``, where ``call()``
runs the work once and returns the tensors that the correctness check compares (the output, and
the gradient for "fwd+bwd"). perf/cases.py lists the cases that use them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

import liptriton
from liptriton import ops
from perf import providers as P

__all__ = [
    "ACT_PROVIDERS",
    "BJORCK_ITERS",
    "LOSS_PROVIDERS",
    "OP_PROVIDERS",
    "Maker",
    "activation",
    "make_bjorck",
    "make_frobenius",
    "make_hkr",
    "make_hkr_multiclass",
    "make_householder",
    "make_parametrization",
    "make_power_iteration",
    "PARAMETRIZATION_PROVIDERS",
    "parametrization_bounded",
    "network",
    "zoo",
]

Maker = Callable[[str, object, str], Callable[[], object]]


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
    """Björck forward + backward of an n x n weight, or of an (m, n) one when ``n`` is a tuple: the
    training weight ``bjorck(W / sigma_max(W))``, the division differentiable, as every provider's.

    liptriton: what a training forward of the library runs (on a CPU, eager or compiled, the steps
    through one eigendecomposition, :func:`~liptriton.ops.bjorck_eigh.bjorck_eigh`, which divides by
    the exact ``sigma_max``; elsewhere ``u^T W v`` with the exact top pair, then Gram space where
    :func:`ops.gram_pays`); torch-ref: ``u^T W v``, then the direct iteration
    :func:`ops.bjorck_reference` (the op before Gram space). The pair is computed once (SVD)."""
    torch.manual_seed(0)
    m, k = n if isinstance(n, tuple) else (n, None)
    op = ops.bjorck_gram if ops.gram_pays((m, k or m)) else ops.bjorck
    w = _unit_spectral(m, k, device)
    svd_u, _, svd_vh = torch.linalg.svd(w.double(), full_matrices=False)
    u, v = svd_u[:, 0].to(w.dtype), svd_vh[0].to(w.dtype)

    def lip(w: Tensor) -> Tensor:
        if ops.eigh_pays(w.shape, w.device):  # False under torch.compile
            return ops.bjorck_eigh(w, BJORCK_ITERS)[0]
        return op(w / ops.spectral_sigma(w, u, v), BJORCK_ITERS)

    def ref(w: Tensor) -> Tensor:
        return ops.bjorck_reference(w / ops.spectral_sigma(w, u, v), BJORCK_ITERS)

    return _fwd_bwd(_op_fn(provider, lip, ref), w)


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


# A constrained layer's training-mode weight (the parametrization's forward and backward), per method.
PARAMETRIZATION_PROVIDERS = ["aol", "spectral", "bjorck"]


def _constrained_layer(provider: str, size: int | tuple[int, int, int], device: str) -> torch.nn.Module:
    """``size`` n: an n x n Linear; (c, k, side): a c -> c Conv2d with a k x k kernel, padding k // 2,
    that has seen a side x side input."""
    torch.manual_seed(0)
    if isinstance(size, tuple):
        c, k, side = size
        layer = torch.nn.Conv2d(c, c, k, padding=k // 2).to(device)
    else:
        layer = torch.nn.Linear(size, size).to(device)
    getattr(liptriton, provider)(layer)
    if isinstance(size, tuple):
        with torch.no_grad():
            layer(torch.randn(1, size[0], size[2], size[2], device=device))  # the conv state learns the size
    return layer.train()


def make_parametrization(provider: str, size: int | tuple[int, int, int], device: str) -> Callable[[], object]:
    """Forward + backward of the weight a layer constrained by ``provider`` applies in training."""
    layer = _constrained_layer(provider, size, device)
    original = layer.parametrizations.weight.original
    g = torch.randn_like(original)

    def call() -> tuple[Tensor, Tensor]:
        w = layer.weight
        (grad,) = torch.autograd.grad(w, original, g)
        return w.detach(), grad

    return call


def parametrization_bounded(provider: str, size: int | tuple[int, int, int], device: str) -> bool:
    """The correctness check of the parametrization case: the weight's norm (float64 SVD of the
    dense weight; conv_norm_bound of the operator) is at most 1 (1 + 1e-4)."""
    from liptriton.bounds.conv_bound import conv_norm_bound
    from liptriton.bounds.conv_operator import ConvSpec

    layer = _constrained_layer(provider, size, device)
    w = layer.weight.detach().double().cpu()
    if isinstance(size, tuple):
        norm = conv_norm_bound(ConvSpec.from_module(layer), w, (size[2], size[2])).bound
    else:
        norm = float(torch.linalg.matrix_norm(w, 2))
    return norm <= 1 + 1e-4


ACT_PROVIDERS = ["liptriton", "liptriton-compiled", "torch-ref", "deel-torchlip", "relu", "relu-compiled"]


def activation(kind: str) -> Callable[[str, tuple, str], Callable[[], object]]:
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


def _hkr_maker(provider: str, name: str, x: Tensor, y: Tensor) -> Callable[[], object]:
    """Forward + backward of loss class ``name`` (HKRLoss, HKRMulticlassLoss) of the provider's library."""
    if provider == "deel-torchlip":
        from deel import torchlip

        fn = getattr(torchlip, name)(alpha=0.9, min_margin=1.0)
    else:
        fn = getattr(liptriton, name)(alpha=0.9, min_margin=1.0)
    inner = _fwd_bwd(_compiled(lambda t: fn(t, y), provider), x)

    def call() -> object:
        with P.provider_context(provider):
            return inner()

    return call


def make_hkr(provider: str, n: int, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    x = torch.randn(n, 1, device=device)
    y = (torch.arange(n, device=device) % 2).float().unsqueeze(1) * 2 - 1
    return _hkr_maker(provider, "HKRLoss", x, y)


def make_hkr_multiclass(provider: str, n: int, device: str) -> Callable[[], object]:
    torch.manual_seed(0)
    x = torch.randn(n, 10, device=device)
    y = torch.nn.functional.one_hot(torch.arange(n, device=device) % 10, 10).float()
    return _hkr_maker(provider, "HKRMulticlassLoss", x, y)


def network(name: str, mode: str, dtype: str = "float32") -> Maker:
    def make(provider: str, size: tuple[int, int, int], device: str) -> Callable[[], object]:
        batch, image, width = size
        maker = P.make_step if mode == "train-step" else P.make_eval
        fn, net = maker(name, provider, batch, device=device, dtype=dtype, image=image, width=width)
        fn.module = net  # the runner checks that every weight got a gradient
        return fn

    return make


def zoo(stage: str) -> Maker:
    """Maker of the torchvision-zoo cases: ``stage`` "convert" (lipschitzify without example input),
    "initialize" (:func:`liptriton.parametrizations.initialize` of a fresh deep copy of the converted
    model: the copy is part of the timed call) or "certify" (:func:`liptriton.certify` of the
    initialized model on the whole batch). Size: (torchvision model name, image side, batch)."""

    def make(provider: str, size: tuple[str, int, int], device: str) -> Callable[[], object]:
        import copy

        from perf.zoo_train import torchvision_models

        name, side, batch = size
        torch.manual_seed(0)
        net = getattr(torchvision_models(), name)(num_classes=10).eval().to(device)
        x = torch.rand(batch, 3, side, side, device=device)
        if stage == "convert":
            return lambda: torch.tensor(liptriton.lipschitzify(net).lipschitz_report.planned_bound)
        lip = liptriton.lipschitzify(net)
        if stage == "initialize":
            def call() -> Tensor:
                return liptriton.parametrizations.initialize(copy.deepcopy(lip), x[:1])(x[:1]).detach()

            return call
        liptriton.parametrizations.initialize(lip, x[:1])
        return lambda: torch.tensor(liptriton.certify(lip, x).upper)

    return make
