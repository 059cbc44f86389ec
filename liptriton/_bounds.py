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
import torch.nn.functional as F
from torch import fx, nn

from liptriton._fn_rules import RANDOM, RANDOM_METHODS, function_rule
from liptriton._fn_rules_basic import RuleContext, smul
from liptriton._inplace import aliases, check_inplace
from liptriton._rules import (
    ConvexSum,
    Scaled,
    ScaledAdaptivePool,
    activation_constant,
    adaptive_windows_bound,
    avg_pool_nominal,
    window_overlap,
)
from liptriton.ops.conv_bound import conv_norm_bound
from liptriton.ops.conv_operator import ConvSpec

__all__ = ["TRACE_ERRORS", "LeafTracer", "NodeBound", "module_constant", "propagate"]

_INF = math.inf
_RULE_ERRORS = (TypeError, ValueError, RuntimeError, IndexError, KeyError, AttributeError, NotImplementedError)
# what tracing user code can raise (data-dependent control flow, unsupported calls, ...)
TRACE_ERRORS = (fx.proxy.TraceError, TypeError, ValueError, RuntimeError, AttributeError, NotImplementedError,
                AssertionError, IndexError, KeyError)
_LIP_ACTS = ("GroupSort", "GroupSort2", "FullSort", "MaxMin", "LPReLU", "HouseHolder")
_LIP_LEAVES = ("LipResidual", "BatchLipNorm", "BatchCentering", "BatchCentering2d", "LayerCentering",
               "LayerCentering2d", "ScaleBiasLayer")
_NO_BOUND = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
             nn.LocalResponseNorm)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


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


def is_stochastic_depth(module: nn.Module) -> bool:
    """Whether ``module`` is torchvision's ``StochasticDepth`` (recognized without importing torchvision)."""
    return type(module).__name__ == "StochasticDepth" and type(module).__module__.startswith("torchvision.")


class LeafTracer(fx.Tracer):
    """fx tracer whose leaves are the modules with a Lipschitz rule (and every torch.nn module).

    torchvision's ``StochasticDepth`` is a leaf too: traced through, its ``self.training`` would be
    frozen into the graph as a constant (always off, or always on).
    """

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (ConvexSum, Scaled, ScaledAdaptivePool)) or type(m).__name__ in _LIP_ACTS + _LIP_LEAVES:
            return True
        if is_stochastic_depth(m):
            return True
        if callable(getattr(m, "lipschitz_bound", None)) and all(n == "parametrizations" for n, _ in m.named_children()):
            return True  # a layer with its own bound; containers (liptriton.Sequential) are traced through
        return super().is_leaf_module(m, qualname)


def _parametrized_bound(module: nn.Module) -> float | None:
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if plist is None:
        return None
    bounds = [p.lipschitz_bound() for p in plist if callable(getattr(p, "lipschitz_bound", None))]
    return math.prod(bounds) if bounds else None


def _schur(fn: Callable, shape: tuple[int, ...]) -> float:
    """Schur bound sqrt(max row sum * max col sum) of a non-negative linear map, by autograd."""
    x = torch.ones(1, *shape[1:], dtype=torch.float64, requires_grad=True)
    y = fn(x)
    (cols,) = torch.autograd.grad(y.sum(), x)
    return math.sqrt(float(y.detach().max()) * float(cols.max()))


def module_constant(module: nn.Module, in_shape: tuple[int, ...] | None, nominal: bool) -> tuple[float, str]:
    """Lipschitz constant of a leaf module at input shape ``in_shape`` (None: unknown).

    Args:
        module: the module (in eval mode).
        in_shape: the input's shape (batch first) or None.
        nominal: trust parametrizations' own ``lipschitz_bound()`` (lipschitzify's planning)
            instead of measuring the weight (certify).

    Returns:
        (constant, note).
    """
    name = type(module).__name__
    if nominal and (pb := _parametrized_bound(module)) is not None:
        return pb, "parametrization bound"
    if nominal and callable(getattr(module, "lipschitz_bound", None)):
        return float(module.lipschitz_bound()), "module's lipschitz_bound()"
    if isinstance(module, nn.Linear):
        w = module.weight.detach().double()
        return float(torch.linalg.matrix_norm(w, 2)) * (1 + 1e-12), "float64 SVD"
    if isinstance(module, nn.modules.conv._ConvNd):
        if in_shape is None:
            return _INF, "input size unknown"
        spec = ConvSpec.from_module(module)
        res = conv_norm_bound(spec, module.weight, tuple(in_shape[2:]))
        return res.bound, f"{res.method} operator bound at {tuple(in_shape[2:])}"
    if isinstance(module, Scaled):
        c, note = module_constant(module.module, in_shape, nominal)
        return module.scale * c, f"{module.scale:.4g} x ({note})"
    if isinstance(module, ScaledAdaptivePool):
        return 1.0, "pooling divided by its Schur / overlap bound"
    if name in _LIP_ACTS:
        return float(module.k_coef_lip), "k_coef_lip"
    if (c := activation_constant(module)) is not None:
        return c, "max |f'|"
    if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
        return 1.0, "identity in eval"
    if is_stochastic_depth(module):
        return 1.0, "stochastic depth: identity in eval"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training or module.running_var is None:
            return _INF, "batch statistics (not an eval-mode affine map)"
        scale = 1.0 / torch.sqrt(module.running_var.double() + module.eps)
        if module.weight is not None:
            scale = scale * module.weight.detach().double().abs()
        return float(scale.max()), "max |gamma| / sqrt(var + eps)"
    if isinstance(module, _NO_BOUND):
        return _INF, f"{name} divides by a data-dependent norm: no finite global bound"
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)):
        nd = int(name[-2])
        return math.sqrt(window_overlap(module.kernel_size, module.stride, module.dilation, nd)), "overlap"
    if isinstance(module, (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d)) and float(module.norm_type) == 2.0:
        nd = int(name[-2])
        c = math.sqrt(window_overlap(module.kernel_size, module.stride, 1, nd)) * getattr(module, "k_coef_lip", 1.0)
        return c, "overlap (l2 pooling)"
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        if in_shape is None:
            return avg_pool_nominal(module, int(name[-2])), "Schur (size-free)"
        return _schur(module, in_shape), f"Schur at {tuple(in_shape[2:])}"
    if isinstance(module, _ADAPTIVE):
        if in_shape is None:
            return _INF, "input size unknown"
        if isinstance(module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            return _schur(module, in_shape), f"Schur at {tuple(in_shape[2:])}"
        nd = int(name[-2])
        outs = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * nd
        return adaptive_windows_bound(tuple(in_shape[-nd:]), outs, False), "overlap"
    if name in ("BatchLipNorm", "BatchCentering", "BatchCentering2d"):
        if module.training:
            return _INF, "batch statistics (not an eval-mode affine map)"
        return (float(module.get_scaling()) if module.normalize else 1.0), "eval-mode scale"
    if name in ("LayerCentering", "LayerCentering2d"):
        return 1.0, "centering is a projection"
    if name == "ScaleBiasLayer":
        return float(torch.as_tensor(module.scalar).detach().abs().max()), "|scalar|"
    if isinstance(module, nn.Softmax):
        return 1.0, "softmax is 1-Lipschitz"
    if isinstance(module, nn.MultiheadAttention):
        return _INF, "softmax attention has no finite global Lipschitz bound"
    if callable(getattr(module, "lipschitz_bound", None)):
        return float(module.lipschitz_bound()), "module's lipschitz_bound()"
    return _INF, f"no Lipschitz rule for {name}"


_FN_CONST = {torch.sigmoid: 0.25, F.sigmoid: 0.25, F.gelu: 1.129, F.silu: 1.0999, F.mish: 1.0885,
             F.hardswish: 1.5, torch.selu: 1.7581, F.selu: 1.7581}


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
        nominal: see :func:`module_constant`.
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
            if isinstance(mod, ConvexSum) or type(mod).__name__ == "LipResidual":
                if isinstance(mod, ConvexSum):
                    w = mod.weights().detach().double().abs().tolist()
                else:
                    a = float(torch.sigmoid(mod.alpha.detach().double()))
                    w = [a, 1.0 - a]
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
