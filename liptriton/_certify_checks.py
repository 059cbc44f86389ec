"""The checks around :func:`liptriton.certify`: inputs it can run, weights it can bound, and the
soundness check of its result (a measured lower bound above the upper bound names the node).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, fx, nn
from torch.autograd import forward_ad as fwAD
from torch.fx.passes.shape_prop import ShapeProp

from liptriton._propagate import NodeBound
from liptriton._fn_rules_basic import VALUE_KEY, RuleContext

__all__ = ["LOW_PRECISION_RTOL", "SOUNDNESS_RTOL", "check_finite", "check_runs", "check_sound", "record_shapes"]

# a measured lower bound may exceed the upper bound by float64 rounding, never by more (by float32
# rounding where the model itself computes in float32)
SOUNDNESS_RTOL = 1e-6
LOW_PRECISION_RTOL = 1e-3
_METADATA = ("shape", "dtype", "device", "ndim", "layout", "is_cuda")


def check_finite(model: nn.Module, where: str) -> None:
    """Raise a ValueError naming the first parameter or buffer with NaN / inf entries."""
    for kind, items in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in items:
            if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
                bad = int((~torch.isfinite(t.detach())).sum())
                raise ValueError(f"certify: {kind} {name!r}{where} has {bad} NaN / inf entries of {t.numel()}: "
                                 "a model with non-finite weights has no Lipschitz bound (was training "
                                 "diverging, or the file corrupted?)")


def check_runs(net: nn.Module, x: Tensor) -> None:
    """Run the model on one sample; raise a ValueError with the model's own error if it cannot."""
    try:
        with torch.no_grad():
            net(x[:1].clone())
    except Exception as err:  # noqa: BLE001 (whatever the model raises means: not an input it takes)
        hint = ""
        if x.dim() == 1:
            hint = (f" A 1-D example_input is read as {x.shape[0]} samples of no dimension; for one sample of "
                    f"shape {tuple(x.shape)}, pass example_input.unsqueeze(0).")
        raise ValueError(
            f"certify: the model cannot run on example_input of shape {tuple(x.shape)} (certify runs it on "
            f"its first sample, shape {tuple(x[:1].shape)}): {type(err).__name__}: {err}. Expected a batch "
            f"(batch dimension first) of inputs at the size the model takes.{hint}") from None


def record_shapes(gm: fx.GraphModule, x: Tensor) -> None:
    """Shape propagation that also keeps, in ``node.meta``, the value of every node that cannot
    depend on the input (parameters, constants) and every non-tensor value (shapes, numbers)."""
    depends: set[str] = set()  # nodes whose value may depend on the input's values (not only its shape)
    for node in gm.graph.nodes:
        metadata = (node.op == "call_method" and node.target in ("size", "dim", "numel")) or (
            node.op == "call_function" and node.target is getattr and node.args[1] in _METADATA)
        if (node.op == "placeholder" and not depends) or (
                not metadata and any(a.name in depends for a in node.all_input_nodes)):
            depends.add(node.name)

    class _Record(ShapeProp):
        def run_node(self, n: fx.Node):
            result = super().run_node(n)
            if not isinstance(result, Tensor) and not any(isinstance(r, Tensor) for r in _flat(result)):
                n.meta[VALUE_KEY] = result
            elif isinstance(result, Tensor) and n.name not in depends:
                n.meta[VALUE_KEY] = result.detach()
            return result

    with torch.no_grad():
        _Record(gm).propagate(x)


def _flat(value) -> list:
    out: list = []
    fx.node.map_aggregate(value, out.append)
    return out


def _node_values(gm: fx.GraphModule, z: Tensor, v: Tensor | None) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Every tensor node's value at ``z`` (batch of 1) and, with forward AD, its derivative along ``v``."""
    values: dict[str, tuple[Tensor, Tensor | None]] = {}

    class _Keep(fx.Interpreter):
        def run_node(self, n: fx.Node):
            result = super().run_node(n)
            if isinstance(result, Tensor) and result.is_floating_point():
                primal, tangent = fwAD.unpack_dual(result) if v is not None else (result, None)
                values[n.name] = (primal.detach().clone(), None if tangent is None else tangent.detach().clone())
            return result

    with torch.no_grad():
        if v is None:
            _Keep(gm).run(z.unsqueeze(0).clone())
        else:
            with fwAD.dual_level():
                _Keep(gm).run(fwAD.make_dual(z.unsqueeze(0).clone(), v.unsqueeze(0).clone()))
    return values


def _culprit(gm: fx.GraphModule, rows: list[NodeBound], z: Tensor, v: Tensor, rtol: float) -> str:
    """The first node whose measured rate of change along ``v`` at ``z`` exceeds its bound."""
    rates: dict[str, float] = {}
    h = 1e-6 * (float(z.norm()) + 1.0)
    try:
        at = _node_values(gm, z, v)
    except (RuntimeError, NotImplementedError):  # an op without forward AD: secants only
        at = _node_values(gm, z, None)
    for step in (h, 1e3 * h):
        moved = _node_values(gm, z + step * v, None)
        for name, (value, tangent) in at.items():
            if name in moved and moved[name][0].shape == value.shape:
                rates[name] = max(rates.get(name, 0.0), float((moved[name][0] - value).norm()) / step)
            if tangent is not None:
                rates[name] = max(rates.get(name, 0.0), float(tangent.norm()))
    for r in rows:
        rate = rates.get(r.name)
        if rate is not None and rate > r.bound * (1 + rtol) + 1e-12:
            return (f"node {r.name!r} ({r.op}, rule: {r.note}) changes at rate {rate:.6g} along the direction "
                    f"found, above its bound {r.bound:.6g}")
    return "no single node could be singled out (the output as a whole)"


def check_sound(gm: fx.GraphModule | None, rows: list[NodeBound], upper: float, lower: float, found: dict,
                error: type[Exception]) -> None:
    """Raise ``error`` naming the node at fault if ``lower`` exceeds ``upper`` beyond rounding."""
    low = any(m is not None and m.dtype not in (torch.float64, torch.complex128) and m.dtype.is_floating_point
              for m in (RuleContext.meta(n) for n in gm.graph.nodes)) if gm is not None else False
    rtol = LOW_PRECISION_RTOL if low else SOUNDNESS_RTOL
    if gm is None or not math.isfinite(upper) or lower <= upper * (1 + rtol) + 1e-12:
        return
    where = "the point was not recorded"
    if "z" in found:
        where = _culprit(gm, rows, found["z"].to(torch.float64), found["v"].to(torch.float64), rtol)
    raise error(f"certify: the measured lower bound {lower:.6g} exceeds the proven upper bound {upper:.6g}: "
                f"{where}. A certificate is never allowed to be below a measurement: this is a bug of "
                "liptriton (a rule that misses an input or a discontinuity); please report it with the model.")
