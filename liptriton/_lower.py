"""Measured lower bound of a model's l2 Lipschitz constant (torch.func).

At sample points, the spectral norm of the Jacobian by power iteration (``v <- J^T J v`` with
``jvp`` and ``vjp``); then gradient ascent on the point to increase ``||J(x) v||``, with more
power steps. Every reported value is ``||J(x) v||`` for a unit ``v`` (a lower bound of
``||J(x)||``, itself at most the Lipschitz constant, also at kinks: autograd returns an element
of the Clarke Jacobian) or a secant ``||f(x + h v) - f(x)|| / h`` (a lower bound by definition).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp
from torch.utils._pytree import tree_leaves

__all__ = ["jacobian_lower_bound"]


def _unit(v: Tensor) -> Tensor:
    return v / v.norm().clamp_min(1e-300)


def _flat(out, dtype: torch.dtype) -> Tensor:
    """The model's output as one vector (a tuple or dict of tensors: all of them, integers included)."""
    if isinstance(out, Tensor):
        return out.flatten()
    leaves = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
    return torch.cat([t.flatten().to(dtype) for t in leaves]) if leaves else torch.zeros(0, dtype=dtype)


def jacobian_lower_bound(model: nn.Module, inputs: Tensor, n_samples: int = 4, power_iters: int = 20,
                         ascent_steps: int = 5, step: Callable[[], None] | None = None,
                         exact_model: nn.Module | None = None, found: dict | None = None) -> tuple[float, str]:
    """Lower bound of the Lipschitz constant of ``model`` (eval mode, no in-place buffer updates).

    The search runs on ``model`` (e.g. float32, fast); the value reported for each starting
    point is recomputed at the point and direction found with ``exact_model`` (e.g. the same
    weights in float64), so that search rounding cannot inflate the bound.

    Args:
        model: the model; called on one sample at a time (batch of 1).
        inputs: a batch; the first ``n_samples`` samples are the starting points.
        n_samples: number of starting points.
        power_iters: power steps at each point.
        ascent_steps: gradient-ascent steps on each point (each followed by power steps).
        step: progress callback, called once per power iteration.
        exact_model: the model that evaluates the reported values (default: ``model``).
        found: if given, receives ``z`` and ``v``: the sample and unit direction of the result.

    Returns:
        (lower bound, note saying where it was reached).

    Examples:
        >>> net = torch.nn.Linear(3, 2).double().eval()
        >>> lb, _ = jacobian_lower_bound(net, torch.randn(2, 3, dtype=torch.float64))
        >>> abs(lb - float(torch.linalg.matrix_norm(net.weight.detach(), 2))) < 1e-6
        True
    """
    def functional(net: nn.Module) -> Callable[[Tensor], Tensor]:
        params = {k: v.detach() for k, v in net.named_parameters()}
        buffers = {k: v.detach() for k, v in net.named_buffers()}
        # a fresh input per call: a model that writes into its input must not change the sample
        return lambda z: _flat(functional_call(net, (params, buffers), (z.unsqueeze(0).clone(),)), z.dtype)

    f = functional(model)
    exact = functional(exact_model if exact_model is not None else model)
    dtype = next((p.dtype for p in exact_model.parameters()), torch.float64) if exact_model is not None else inputs.dtype

    def norm_jv(z: Tensor, v: Tensor) -> Tensor:
        return jvp(f, (z,), (v,))[1].norm()

    forward_ad = True

    def jv_of(z: Tensor, v: Tensor, fn: Callable = f) -> Tensor:
        nonlocal forward_ad
        if forward_ad:
            try:
                return jvp(fn, (z,), (v,))[1]
            except (RuntimeError, NotImplementedError):  # no forward AD for an op: use secants
                forward_ad = False
        h = 1e-3 * (float(z.norm()) + 1.0)
        return (fn(z + h * v) - fn(z)) / h  # its norm is a secant slope: a lower bound as well

    def power(z: Tensor, v: Tensor, iters: int) -> tuple[Tensor, float]:
        best = 0.0
        try:  # one forward at z for every step (the pullback can be called again and again)
            _, pullback = vjp(f, z)
        except (RuntimeError, NotImplementedError):
            pullback = None
        for _ in range(iters):
            jv = jv_of(z, v)
            best = max(best, float(jv.norm()))
            w = None
            if pullback is not None:
                try:
                    (w,) = pullback(jv)
                except (RuntimeError, NotImplementedError):
                    w = None
            if w is None:
                w = torch.randn_like(z)
            if float(w.norm()) == 0.0:
                break
            v = _unit(w)
            if step is not None:
                step()
        return v, best

    lower, where = 0.0, "no sample"
    ascent_ok = True
    for i in range(min(n_samples, inputs.shape[0])):
        z = inputs[i].detach().clone()
        v = _unit(torch.randn_like(z))
        v, best = power(z, v, power_iters)
        best_z, best_v, origin = z, v, f"||J v|| at sample {i}"
        scale = float(z.norm()) / max(z.numel(), 1) ** 0.5 + 1e-3
        for t in range(ascent_steps if ascent_ok else 0):
            try:
                g = grad(norm_jv)(z, v)
            except (RuntimeError, NotImplementedError):  # no forward-over-reverse support: keep the estimate
                ascent_ok = False
                break
            if float(g.norm()) == 0.0:  # piecewise linear: the norm is locally constant
                z = z + 0.1 * scale * torch.randn_like(z)
            else:
                z = z + 0.1 * scale * (z.numel() ** 0.5) * _unit(g)
            v, est = power(z, v, max(power_iters // 4, 2))
            if est > best:
                best, best_z, best_v, origin = est, z, v, f"||J v|| after ascent step {t + 1} from sample {i}"
        # the reported values, recomputed with the exact model at the point and direction found
        z64, v64 = best_z.to(dtype), _unit(best_v.to(dtype))
        with torch.no_grad():
            jv = float(jv_of(z64, v64, exact).norm())
            h = 1e-3 * (float(z64.norm()) + 1.0)
            secant = float((exact(z64 + h * v64) - exact(z64)).norm()) / h
        if jv > lower:
            lower, where = jv, origin
        if secant > lower:
            lower, where = secant, f"secant at sample {i}"
        if found is not None and lower in (jv, secant):
            found.update(z=z64, v=v64)
    return lower, where + ("" if ascent_ok else " (no gradient ascent: unsupported op)")
