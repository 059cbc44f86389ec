"""Measured lower bound of a model's l2 Lipschitz constant (reverse-mode autograd).

At sample points, the top singular pair of the Jacobian ``J(z)``: exactly (float64 ``eigh`` of
``J J^T`` from one pullback per output, on one forward) when the output has few entries (at
most 4 per power step the search is allotted: cheaper than the power steps, a ``jvp`` costing
about three pullbacks), else by power iteration (``v <- J^T J v`` with ``jvp`` and the pullback
of one forward); then gradient ascent on the point to increase ``||J(z) v||`` (the gradient is
the Hessian-vector product ``d/dz <w, J(z) v>`` with ``w = J v / ||J v||``: reverse over
reverse on the same forward). Every reported value is ``||J(z) v||`` for a unit ``v``
recomputed by ``jvp`` at the point and direction found (a lower bound of ``||J(z)||``, itself
at most the Lipschitz constant, also at kinks: autograd returns an element of the Clarke
Jacobian) or a secant ``||f(z + h v) - f(z)|| / h`` (a lower bound by definition): the search
chooses where to look, never the value.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.utils._pytree import tree_leaves

__all__ = ["jacobian_lower_bound"]

_AD_ERRORS = (RuntimeError, NotImplementedError)
# the exact top pair costs one pullback per output; power steps cost about 4 (a jvp ~3 pullbacks)
_EXACT_PER_STEP = 4


def _unit(v: Tensor) -> Tensor:
    return v / v.norm().clamp_min(1e-300)


def _flat(out, dtype: torch.dtype) -> Tensor:
    """The model's output as one vector (a tuple or dict of tensors: all of them, integers included)."""
    if isinstance(out, Tensor):
        return out.flatten()
    leaves = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
    return torch.cat([t.flatten().to(dtype) for t in leaves]) if leaves else torch.zeros(0, dtype=dtype)


def _functional(net: nn.Module) -> Callable[[Tensor], Tensor]:
    """``z -> flat output of net(z[None])`` with the weights as constants (no gradient to them)."""
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    # a fresh input per call: a model that writes into its input must not change the sample
    return lambda z: _flat(functional_call(net, (params, buffers), (z.unsqueeze(0).clone(),)), z.dtype)


class _Search:
    """The search's Jacobian products at one point at a time (float32 model, say), with fallbacks:
    secants where forward-mode AD is missing, random directions where the pullback is."""

    def __init__(self, f: Callable[[Tensor], Tensor], step: Callable[[], None] | None) -> None:
        self.f, self.step = f, step
        self.forward_ad, self.reverse_ok, self.ascent_ok, self.flat = True, True, True, False
        self.z: Tensor | None = None
        self.out: Tensor | None = None

    def at(self, z: Tensor) -> None:
        """One forward at ``z``, kept for every pullback there."""
        self.z, self.out = z.detach().clone().requires_grad_(True), None
        if self.reverse_ok:
            try:
                with torch.enable_grad():
                    out = self.f(self.z)
                self.out = out if out.requires_grad else None
            except _AD_ERRORS:
                self.reverse_ok = False

    def pull(self, u: Tensor, create_graph: bool = False) -> Tensor | None:
        """``J(z)^T u`` (None when the model has no pullback)."""
        if self.out is None:
            return None
        try:
            (w,) = torch.autograd.grad(self.out, self.z, u, retain_graph=True, create_graph=create_graph,
                                       allow_unused=True)
        except _AD_ERRORS:
            if not create_graph:  # no pullback: none from now on (a second-order failure keeps the first)
                self.out = None
            return None
        return torch.zeros_like(self.z) if w is None else w

    def jv(self, v: Tensor, fn: Callable[[Tensor], Tensor] | None = None, z: Tensor | None = None) -> Tensor:
        """``J(z) v`` by forward-mode AD, or a secant where an op has none."""
        fn, z = fn or self.f, (self.z if z is None else z).detach()
        if self.forward_ad:
            try:
                return jvp(fn, (z,), (v,))[1]
            except _AD_ERRORS:  # no forward AD for an op: use secants
                self.forward_ad = False
        h = 1e-3 * (float(z.norm()) + 1.0)
        return (fn(z + h * v) - fn(z)) / h  # its norm is a secant slope: a lower bound as well

    def top(self, v: Tensor, iters: int) -> tuple[Tensor, float, Tensor | None]:
        """(unit v, ||J v|| estimate, unit J v) at the current point: exact when cheaper, else power steps."""
        m = self.out.numel() if self.out is not None else -1
        if 0 < m <= _EXACT_PER_STEP * iters:
            rows = [self.pull(e) for e in torch.eye(m, dtype=self.out.dtype, device=self.out.device)]
            if all(r is not None for r in rows):
                jac = torch.stack([r.flatten() for r in rows]).double()
                lam, vecs = torch.linalg.eigh(jac @ jac.T)
                w = vecs[:, -1]
                top = _unit(jac.T @ w)
                for _ in range(iters):
                    if self.step is not None:
                        self.step()
                if float(top.norm()) > 0:
                    v = top.reshape(v.shape).to(v.dtype)
                return v, float(lam[-1].clamp_min(0.0)) ** 0.5, w.to(self.out.dtype)
        best, w = 0.0, None
        for _ in range(iters):
            jv = self.jv(v)
            best, w = max(best, float(jv.norm())), _unit(jv)
            pulled = self.pull(jv.detach())
            if pulled is None:
                pulled = torch.randn_like(v)
            if float(pulled.norm()) == 0.0:
                break
            v = _unit(pulled)
            if self.step is not None:
                self.step()
        return v, best, w

    def ascent(self, v: Tensor, w: Tensor | None) -> Tensor | None:
        """Gradient of ``||J(z) v||`` at the current point (``w`` its unit output direction): the
        Hessian-vector product of ``<w, f>`` along ``v``. None when unsupported (no ascent from
        then on); zeros once one was exactly zero (a piecewise-linear model, its Jacobian locally
        constant: the caller then takes random steps without asking again)."""
        if self.flat:
            return torch.zeros_like(v)
        g = None
        if w is not None and self.out is not None and self.out.numel() == w.numel():
            with torch.enable_grad():
                pulled = self.pull(w, create_graph=True)
                if pulled is not None and pulled.requires_grad:
                    try:
                        (g,) = torch.autograd.grad((pulled * v).sum(), self.z, allow_unused=True)
                        g = torch.zeros_like(v) if g is None else g  # unused: no path from z
                    except _AD_ERRORS:  # no double backward for an op: no ascent
                        g = None
                elif pulled is not None:
                    g = torch.zeros_like(v)  # no path from z to the pullback: autograd sees a constant J
        if g is None:
            self.ascent_ok = False
            return None
        self.flat = float(g.norm()) == 0.0
        return g


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
        power_iters: power steps at each point (the top singular pair is computed exactly
            instead, one pullback per output, when the output has at most 4 entries per step).
        ascent_steps: gradient-ascent steps on each point (each followed by ``power_iters // 4``
            power steps, at least 2, or the exact top pair).
        step: progress callback, called once per power iteration (or its exact equivalent).
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
    search = _Search(_functional(model), step)
    exact = _functional(exact_model if exact_model is not None else model)
    dtype = next((p.dtype for p in exact_model.parameters()), torch.float64) if exact_model is not None else inputs.dtype
    lower, where = 0.0, "no sample"
    for i in range(min(n_samples, inputs.shape[0])):
        z = inputs[i].detach().clone()
        search.at(z)
        v, best, w = search.top(_unit(torch.randn_like(z)), power_iters)
        best_z, best_v, origin = z, v, f"||J v|| at sample {i}"
        scale = float(z.norm()) / max(z.numel(), 1) ** 0.5 + 1e-3
        for t in range(ascent_steps):
            g = search.ascent(v, w) if search.ascent_ok else None
            if g is None:  # no reverse-over-reverse support: keep the estimate
                break
            if float(g.norm()) == 0.0:  # piecewise linear: the norm is locally constant
                z = z + 0.1 * scale * torch.randn_like(z)
            else:
                z = z + 0.1 * scale * (z.numel() ** 0.5) * _unit(g)
            search.at(z)
            v, est, w = search.top(v, max(power_iters // 4, 2))
            if est > best:
                best, best_z, best_v, origin = est, z, v, f"||J v|| after ascent step {t + 1} from sample {i}"
        search.out = None  # free the search's graph before the exact model runs
        # the reported values, recomputed with the exact model at the point and direction found
        z64, v64 = best_z.to(dtype), _unit(best_v.detach().to(dtype))
        with torch.no_grad():
            jv = float(search.jv(v64, exact, z64).norm())
            h = 1e-3 * (float(z64.norm()) + 1.0)
            secant = float((exact(z64 + h * v64) - exact(z64)).norm()) / h
        if jv > lower:
            lower, where = jv, origin
        if secant > lower:
            lower, where = secant, f"secant at sample {i}"
        if found is not None and lower in (jv, secant):
            found.update(z=z64, v=v64)
    return lower, where + ("" if search.ascent_ok else " (no gradient ascent: unsupported op)")
