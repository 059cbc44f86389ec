"""Per-node Lipschitz bounds and their propagation through a torch.fx graph.

Every node gets ``bound`` = an upper bound of the l2 Lipschitz constant of its value as a
function of the model's input: a layer multiplies its input's bound by its own constant, sums
add, concatenations combine in quadrature, a convex combination (:class:`ConvexSum`) takes
its weighted sum, and an op without a finite constant gives ``inf`` with the reason.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx, nn

from liptriton._fn_rules import RANDOM, RANDOM_METHODS, function_rule
from liptriton._fn_rules_basic import RuleContext, smul
from liptriton._inplace import aliases, check_inplace
from liptriton.rules import is_leaf, module_constant

__all__ = ["TRACE_ERRORS", "LeafTracer", "NodeBound", "propagate"]

_INF = math.inf
_RULE_ERRORS = (TypeError, ValueError, RuntimeError, IndexError, KeyError, AttributeError, NotImplementedError)
# what tracing user code can raise (data-dependent control flow, unsupported calls, ...)
TRACE_ERRORS = (fx.proxy.TraceError, TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError,
                AssertionError, IndexError, KeyError)


@dataclass
class NodeBound:
    """One row of the per-node table.

    Attributes:
        name: the fx node name.
        op: what the node computes (module type or function name).
        local: the node's own constant (how much it multiplies its input's bound).
        bound: the bound of the node's value as a function of the model input.
        note: how ``local`` was obtained, or why it is infinite.
    """

    name: str
    op: str
    local: float
    bound: float
    note: str = ""


class LeafTracer(fx.Tracer):
    """fx tracer whose leaves are the modules whose rule bounds them whole (:func:`liptriton.rules.is_leaf`:
    activations, liptriton layers, the modules lipschitzify inserts) and every torch.nn module;
    containers (liptriton.Sequential) are traced through."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m) or super().is_leaf_module(m, qualname)


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _function_rule(node: fx.Node, b: Callable, gm: fx.GraphModule | None = None, strict: bool = False
                   ) -> tuple[float, float, str]:
    """(local, bound, note) of a call_function / call_method node; ``b(arg)`` is an arg's bound."""
    ctx = RuleContext(b, gm, strict)
    return function_rule(node, ctx)


def _has_integer_part(node: fx.Node) -> bool:
    """Whether a tuple-valued node (torch.max(x, dim), sort, topk) holds an integer tensor."""
    meta = node.meta.get("tensor_meta")
    if not isinstance(meta, (tuple, list)):
        return False
    return any(getattr(m, "dtype", torch.float32).is_floating_point is False for m in meta)


def propagate(gm: fx.GraphModule, nominal: bool, step: Callable[[], None] | None = None,
              unbounded_as_one: bool = False) -> tuple[list[NodeBound], float]:
    """Propagate bounds through ``gm`` (shapes in ``node.meta['tensor_meta']`` where known).

    Every node gets the bound of its value as a function of the model input; a node whose
    value is an integer or bool tensor that depends on the input gets ``inf`` (a step
    function); a write in place is accounted for wherever the written tensor is read later.

    Args:
        gm: a traced module (leaves as :class:`LeafTracer` picks them).
        nominal: see :func:`liptriton.rules.module_constant`.
        step: called after each node (progress).
        unbounded_as_one: count a node without a finite constant as 1-Lipschitz in its inputs
            (quadrature); its row keeps ``local = inf``. lipschitzify(strict=False) scales what it
            covers with this (the result is not a bound of the whole model).

    Returns:
        (rows, bound of the output).
    """
    bounds: dict[str, float] = {}
    rows: list[NodeBound] = []
    seen_input = False
    out = _INF
    ctx = RuleContext(lambda n: bounds[n.name], gm, strict=not nominal)
    b = ctx.b
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    groups = aliases(gm)

    for node in gm.graph.nodes:
        note = ""
        op = node.op if node.op in ("placeholder", "output", "get_attr") else str(
            getattr(node.target, "__name__", node.target))
        if node.op == "placeholder":
            local, bound = 1.0, 0.0 if seen_input else 1.0
            seen_input, note = True, "model input" if bound else "extra input (its default: a constant)"
        elif node.op == "get_attr":
            local, bound, note = 0.0, 0.0, "constant"
        elif node.op == "call_module":
            mod = gm.get_submodule(node.target)
            op = type(mod).__name__
            if callable(getattr(mod, "convex_weights", None)):  # ConvexSum, LipResidual
                w = mod.convex_weights()
                local = 1.0
                parts = [smul(ctx.bcast(a, node), b(a)) for a in node.args]
                # planning (nominal) must hold for any learned weights: max_i L_i
                bound = max(parts) if nominal else sum(smul(wi, p) for wi, p in zip(w, parts))
                note = "convex combination: " + ("max_i L_i" if nominal else "sum_i w_i L_i")
                if len(parts) != len(w) or node.kwargs:
                    local, bound, note = _INF, _INF, f"{op} called with {len(parts)} inputs for {len(w)} weights"
            else:
                first = node.args[0] if node.args else None
                extra = [a.name for a in node.all_input_nodes if a is not first and b(a) > 0]
                local, note = module_constant(mod, _shape(first), nominal)
                bound = smul(local, b(first))
                if extra:
                    local, bound = _INF, _INF
                    note = f"called with more input-dependent tensors ({', '.join(extra)}) than its rule accounts for"
        elif node.op == "output":
            local, bound, note = 1.0, b(node.args[0]), "output"
        elif node.target in RANDOM or (node.op == "call_method" and RANDOM_METHODS.get(node.target)):
            local, bound, note = _INF, _INF, "random: the model is not a function of its input"
        elif all(b(a) == 0.0 for a in node.all_input_nodes):
            local, bound, note = 0.0, 0.0, "does not depend on the input"
        else:
            try:
                local, bound, note = function_rule(node, ctx)
            except _RULE_ERRORS as err:  # an argument form a rule does not handle: no bound, never a crash
                local, bound, note = _INF, _INF, f"its rule does not handle this call ({type(err).__name__}: {err})"
        if node.op != "placeholder" and not (node.op == "call_function" and node.target in (operator.getitem,
                                                                                            getattr)):
            mixed = [a.name for a in node.all_input_nodes if b(a) > 0 and _has_integer_part(a)]
            if mixed:  # e.g. the output is torch.max(x, dim) itself: its indices are part of the value
                local, bound, note = _INF, _INF, f"uses the integer part (indices) of {', '.join(mixed)}: discontinuous"
        if node.op in ("call_function", "call_method", "call_module"):
            meta = RuleContext.meta(node)
            if meta is not None and not (meta.dtype.is_floating_point or meta.dtype.is_complex) and bound > 0:
                local, bound, note = _INF, _INF, f"{meta.dtype} valued: discontinuous in the input ({note})"
            local, bound, why = check_inplace(node, gm, local, bound, ctx, bounds, order, groups)
            note = why or note
        if unbounded_as_one and math.isinf(local) and node.op != "output":
            bound = math.sqrt(sum(b(a) ** 2 for a in node.all_input_nodes))
        bounds[node.name] = bound
        if node.op == "output":
            out = bound
        rows.append(NodeBound(node.name, op, local, bound, note))
        if step is not None:
            step()
    return rows, out
