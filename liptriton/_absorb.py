"""Write a converted model's constrained function in the user's own architecture.

lipschitzify changes the graph: it folds BatchNorm into the layer before it, replaces sums by
convex combinations, divides pooling and activations by their constants and scales the output.
The user's architecture has none of that. Every node of the converted graph gets a factor
``c > 0`` with ``converted value = c * plain value``; the plain model then computes the
converted function exactly when

* a Linear / Conv absorbs any factor: its plain weight is ``W c_in / c_out`` and its bias
  ``b / c_out``, for a ``c_out`` left free;
* a positively homogeneous operation (ReLU, GroupSort, max / average pooling, reshapes, a
  product with a constant) passes its input's factor on; a scaling lipschitzify inserted
  multiplies it;
* a sum the user wrote needs equal factors on both terms; a convex combination lipschitzify
  put in its place, ``w_i c_i = c_out``;
* any other operation (GELU, tanh, an added constant, the model's output) needs ``c = 1``.

These are equalities between ``log c``: a union-find with offsets solves them, and an
inconsistent one is a place where the plain architecture cannot compute the converted function
(a scaling no layer can absorb): :class:`NotRepresentable` names the node.
:mod:`liptriton._architecture` turns the factors into the user's weights.
"""

from __future__ import annotations

import math
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from liptriton._origin import INSERTED
from liptriton.nn.inserted import Scaled, ScaledAdaptivePool
from liptriton.rules import is_constrained, is_homogeneous

__all__ = ["NotRepresentable", "solve"]

_BN = nn.modules.batchnorm._BatchNorm
_HOMOGENEOUS_FN = {torch.relu, F.relu, F.leaky_relu, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
                   F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                   F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.flatten, torch.reshape,
                   torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, operator.getitem, operator.neg,
                   torch.neg, torch.abs, operator.abs, F.dropout, F.dropout1d, F.dropout2d, torch.chunk, torch.split,
                   torch.unbind, torch.mean, torch.sum, torch.movedim}
_HOMOGENEOUS_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                        "relu", "abs", "neg", "clone", "detach", "chunk", "split", "unbind", "t", "mean", "sum",
                        "movedim", "expand", "float", "double", "to", "type_as"}
_NOT_TENSOR_ATTRS = {"shape", "dtype", "device", "ndim", "is_cuda"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_LINEAR_WITH_CONSTANT = {operator.mul, operator.imul, torch.mul, operator.truediv, operator.itruediv, torch.div,
                         operator.matmul, torch.matmul}
_CAT = {torch.cat, torch.concat, torch.stack}
_TOL = 1e-9  # on log c: factors agree to 1e-9 relative


class NotRepresentable(ValueError):
    """The user's architecture cannot compute the converted model's function; ``nodes`` says where."""

    def __init__(self, message: str, nodes: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.nodes = nodes


class _Factors:
    """Union-find over ``log c`` with offsets: ``log c[x] - log c[root] = off[x]``."""

    ONE = "<1>"

    def __init__(self) -> None:
        self.parent: dict[str, str] = {self.ONE: self.ONE}
        self.off: dict[str, float] = {self.ONE: 0.0}

    def find(self, x: str) -> tuple[str, float]:
        if x not in self.parent:
            self.parent[x], self.off[x] = x, 0.0
        total, node = 0.0, x
        while self.parent[node] != node:
            total += self.off[node]
            node = self.parent[node]
        self.parent[x], self.off[x] = node, total  # path compression
        return node, total

    def tie(self, x: str, y: str, d: float) -> float:
        """Require ``log c[x] - log c[y] = d``; return the violation (0 when consistent)."""
        (rx, ox), (ry, oy) = self.find(x), self.find(y)
        if rx == ry:
            return ox - oy - d
        if rx == self.ONE:  # keep ONE a root
            rx, ry, ox, oy, d = ry, rx, oy, ox, -d
        self.parent[rx], self.off[rx] = ry, d + oy - ox
        return 0.0

    def value(self, x: str) -> float:
        return math.exp(self.find(x)[1])  # a free root (not tied to ONE) takes c = 1


def _arg_nodes(args) -> list[fx.Node]:
    out: list[fx.Node] = []
    for a in args if isinstance(args, (list, tuple)) else [args]:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(_arg_nodes(a))
        elif isinstance(a, dict):
            out.extend(_arg_nodes(list(a.values())))
    return out


def _liptriton_avg_pools() -> tuple[type, ...]:
    from liptriton.nn.pooling import ScaledAdaptiveAvgPool2d, ScaledAvgPool2d

    return ScaledAvgPool2d, ScaledAdaptiveAvgPool2d


def _scaled_pool_factor(mod: nn.Module, node: fx.Node) -> float | None:
    """The constant factor of a liptriton pooling that scales a plain one (None: needs the input size)."""
    from liptriton.nn.pooling import ScaledAdaptiveAvgPool2d, ScaledAvgPool2d

    if isinstance(mod, ScaledAvgPool2d):
        return float(mod.k_coef_lip * mod.scaling_factor)
    meta = node.args[0].meta.get("tensor_meta") if node.args else None
    if meta is None:
        return None
    if isinstance(mod, ScaledAdaptiveAvgPool2d):
        return math.sqrt(meta.shape[-2] * meta.shape[-1]) * mod.k_coef_lip
    return 1.0 / mod.factor(tuple(meta.shape[-mod.nd:]))


class _Solver:
    def __init__(self, gm: fx.GraphModule, skeleton: nn.Module) -> None:
        self.gm, self.skeleton = gm, skeleton
        self.f = _Factors()
        self.problems: list[tuple[str, str]] = []
        self.depends: set[str] = set()
        self.not_tensor: set[str] = set()
        self.affine: dict[str, list[fx.Node]] = {}  # module target -> its calls

    def tie(self, x: fx.Node | str, y: fx.Node | str, d: float, where: fx.Node, why: str) -> None:
        x = x if isinstance(x, str) else x.name
        y = y if isinstance(y, str) else y.name
        gap = self.f.tie(x, y, d)
        if abs(gap) > _TOL:
            self.problems.append((_where(where), f"{why}: a factor {math.exp(abs(gap)):.6g} from lipschitzify's "
                                              "scalings reaches it and no Linear/Conv can absorb it"))

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in _arg_nodes(list(node.args) + list(node.kwargs.values()))
                if a.name in self.depends and a.name not in self.not_tensor]

    def plain(self, node: fx.Node, why: str) -> None:
        """Any operation: its inputs and its output at factor 1."""
        for a in self.inputs(node):
            self.tie(a, _Factors.ONE, 0.0, node, why)
        self.tie(node, _Factors.ONE, 0.0, node, why)

    def passes(self, node: fx.Node, log_scale: float = 0.0, why: str = "") -> None:
        for a in self.inputs(node):
            self.tie(node, a, log_scale, node, why or "its inputs carry different factors")

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self.depends.add(node.name)
                self.tie(node, _Factors.ONE, 0.0, node, "model input")
                continue
            if node.op == "output":
                for a in _arg_nodes(node.args):
                    if a.name in self.depends and a.name not in self.not_tensor:
                        self.tie(a, _Factors.ONE, 0.0, node, "the model's output")
                continue
            if not any(a.name in self.depends for a in node.all_input_nodes):
                continue  # a constant: the same in both models
            self.depends.add(node.name)
            if node.op == "call_module":
                self.module(node)
            else:
                self.function(node)

    def function(self, node: fx.Node) -> None:
        fn, args = node.target, node.args
        name = getattr(fn, "__name__", str(fn))
        if node.op == "call_method" and fn in ("size", "dim", "numel") or (
                fn is getattr and args[1] in _NOT_TENSOR_ATTRS):
            self.not_tensor.add(node.name)
            return
        if fn is operator.getitem and isinstance(args[0], fx.Node) and args[0].name in self.not_tensor:
            self.not_tensor.add(node.name)
            return
        if tag := node.meta.get(INSERTED):  # lipschitzify's x * factor
            factor = args[1] if isinstance(args[1], (int, float)) else args[0]
            if factor <= 0:
                self.problems.append((_where(node), f"{tag} by {factor} <= 0"))
            else:
                self.passes(node, math.log(factor), f"{tag} {factor:.6g}")
            return
        deps = self.inputs(node)
        if fn in _HOMOGENEOUS_FN or (node.op == "call_method" and fn in _HOMOGENEOUS_METHODS):
            self.passes(node)
        elif fn in _LINEAR_WITH_CONSTANT or (node.op == "call_method" and fn in ("mul", "div", "mul_", "div_")):
            divisor = fn in (operator.truediv, operator.itruediv, torch.div) or fn in ("div", "div_")
            one_input = len(deps) == 1 and (not divisor or (isinstance(args[0], fx.Node) and args[0] is deps[0]))
            if one_input:
                self.passes(node)
            else:
                self.plain(node, f"{name} of input-dependent values")
        elif fn in _ADD or (node.op == "call_method" and fn in ("add", "sub", "add_", "sub_")):
            both = len([a for a in _arg_nodes(args) if a in deps]) == 2
            if both:
                self.passes(node, 0.0, "a sum of terms with different factors")
            else:
                self.plain(node, f"{name} with a constant")
        elif fn in _CAT and all(a.name in self.depends for a in _arg_nodes(args[0])):
            self.passes(node, 0.0, "a concatenation of parts with different factors")
        else:
            self.plain(node, f"{name} is not positively homogeneous")

    def module(self, node: fx.Node) -> None:
        mod = self.gm.get_submodule(node.target)
        orig = _get(self.skeleton, node.target)
        what = type(mod).__name__
        if orig is None:
            if callable(getattr(mod, "convex_weights", None)):  # ConvexSum, LipResidual
                self.convex(node, mod)
            else:
                self.problems.append((_where(node), f"{what} ({node.target}) is not in the user's architecture"))
            return
        if is_constrained(mod) and type(mod) is type(orig):
            calls = self.affine.setdefault(node.target, [])
            if calls:  # a shared layer: one weight for every call
                self.tie(node, calls[0], 0.0, node, f"{node.target} is called twice")
                self.tie(node.args[0], calls[0].args[0], 0.0, node, f"{node.target} is called twice")
            calls.append(node)
            return
        if isinstance(mod, Scaled) and type(mod.module) is type(orig):
            self.scaled(node, mod.module, mod.scale, f"{type(orig).__name__} scaled by {mod.scale:.6g}")
        elif isinstance(mod, ScaledAdaptivePool) and type(mod.pool) is type(orig) or (
                isinstance(mod, _liptriton_avg_pools()) and type(orig) in (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            factor = _scaled_pool_factor(mod, node)
            if factor is None:
                self.problems.append((_where(node), f"{what}: its factor depends on the input size: pass "
                                                 "example_input"))
            else:
                self.passes(node, math.log(factor), f"{what} (factor {factor:.6g})")
        elif isinstance(mod, nn.Identity) and isinstance(orig, (_BN, nn.Identity, nn.Dropout)):
            if isinstance(orig, _BN) and orig.running_var is None:
                self.problems.append((_where(node), f"{type(orig).__name__} {node.target} uses batch statistics "
                                                 "(track_running_stats=False): it is not an identity"))
            self.passes(node)
        elif type(mod) is type(orig) and callable(getattr(mod, "convex_weights", None)):
            self.passes(node, 0.0, f"the user's own {what} of terms with different factors")  # linear
        elif type(mod) is type(orig):
            self.scaled(node, mod, 1.0, what)
        else:
            self.problems.append((_where(node), f"lipschitzify replaced {type(orig).__name__} ({node.target}) by "
                                             f"{what}: the user's architecture computes another function"))

    def scaled(self, node: fx.Node, inner: nn.Module, scale: float, what: str) -> None:
        if is_homogeneous(inner):
            self.passes(node, math.log(scale), what)
        else:
            for a in self.inputs(node):
                self.tie(a, _Factors.ONE, 0.0, node, f"{what} is not positively homogeneous")
            self.tie(node, _Factors.ONE, math.log(scale), node, what)

    def convex(self, node: fx.Node, mod: nn.Module) -> None:
        weights = mod.convex_weights()
        terms = [a for a in _arg_nodes(node.args)]
        for w, term in zip(weights, terms):
            if w <= 0 or term.name not in self.depends:
                self.problems.append((_where(node), f"convex combination weight {w:.3g} on {term.name}"))
                continue
            self.tie(term, node, -math.log(w), node, f"convex combination ({node.meta.get(INSERTED, 'sum')})")


def _where(node: fx.Node) -> str:
    return f"{node.target} (node {node.name})" if node.op == "call_module" else f"node {node.name}"


def _get(root: nn.Module, target: str) -> nn.Module | None:
    try:
        return root.get_submodule(target)
    except AttributeError:
        return None


def solve(gm: fx.GraphModule, skeleton: nn.Module) -> tuple[dict[str, float], dict[str, list[fx.Node]],
                                                            list[tuple[str, str]]]:
    """The factor of every node of ``gm`` (a converted, baked model) against the user's ``skeleton``.

    Args:
        gm: the converted model, its constraints baked in (``tensor_meta`` shapes where a
            scaling depends on the input size).
        skeleton: the user's architecture (module targets as in ``gm``).

    Returns:
        (``c`` of every node by name, the calls of every Linear / Conv by target, the problems
        as ``(where, why)``: empty when the user's architecture can compute ``gm``'s function).

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> lip = liptriton.lipschitzify(net, activations="keep", k=0.5)
        >>> factors, layers, problems = solve(liptriton.bake(lip), lip.meta["liptriton_origin"].skeleton)
        >>> sorted(layers), problems
        (['0', '2'], [])
    """
    solver = _Solver(gm, skeleton)
    solver.run()
    factors = {node.name: solver.f.value(node.name) for node in gm.graph.nodes}
    return factors, solver.affine, list(dict.fromkeys(solver.problems))
