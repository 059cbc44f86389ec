"""The context and the building blocks of the function rules (:mod:`liptriton._fn_rules`).

:class:`RuleContext` answers what a rule needs to know about an argument: its bound (0 for a
value that does not depend on the model input), its shape and dtype (from shape propagation),
its value when it is a constant (a parameter, a number, a shape), and the broadcast
replication of an operand. The blocks (:func:`unary`, :func:`max_min`, :func:`selection`,
:func:`discontinuous`) refuse, with ``inf``, any argument they do not account for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, fx
from torch.fx.passes.shape_prop import TensorMetadata

__all__ = ["INF", "RuleContext", "discontinuous", "max_min", "selection", "smul", "unary"]

INF = math.inf
VALUE_KEY = "liptriton_value"  # node.meta entry: the value of a node that does not depend on the input
_TUPLE_FUNCTIONS = {torch.chunk, torch.split, torch.unbind, torch.tensor_split, torch.max, torch.min, torch.topk,
                    torch.sort}
_TUPLE_METHODS = {"chunk", "split", "unbind", "tensor_split", "topk", "sort", "size"}
_DTYPE_METHODS = {"float": torch.float32, "double": torch.float64, "half": torch.float16,
                  "bfloat16": torch.bfloat16, "int": torch.int32, "long": torch.int64, "short": torch.int16,
                  "bool": torch.bool, "byte": torch.uint8, "char": torch.int8}


def smul(a: float, b: float) -> float:
    """``a * b`` with ``0 * inf = 0`` (a zero factor makes a value constant, whatever the other)."""
    return 0.0 if a == 0.0 or b == 0.0 else a * b


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape) if shape else 1


class RuleContext:
    """What a rule can ask about the arguments of a node.

    Args:
        bound: the bound of a node already propagated.
        gm: the graph module (constants are read from it), or None.
        strict: certify (True): an unknown shape or dtype gives ``inf``; lipschitzify's
            planning (False) assumes no broadcasting and reads dtypes from the call.

    Examples:
        >>> ctx = RuleContext(lambda name: 1.0)
        >>> ctx.b(3.0), smul(0.0, float("inf"))
        (0.0, 0.0)
    """

    def __init__(self, bound: Callable[[fx.Node], float], gm: fx.GraphModule | None = None, strict: bool = True) -> None:
        self._bound, self.gm, self.strict = bound, gm, strict

    def b(self, a: Any) -> float:
        """Bound of an argument: a node's bound, quadrature over containers, 0 for constants."""
        if isinstance(a, fx.Node):
            return self._bound(a)
        if isinstance(a, (list, tuple)):
            return math.sqrt(sum(self.b(x) ** 2 for x in a))
        if isinstance(a, slice):
            return self.b((a.start, a.stop, a.step))
        if isinstance(a, dict):
            return self.b(tuple(a.values()))
        return 0.0

    @staticmethod
    def meta(a: Any) -> TensorMetadata | None:
        m = a.meta.get("tensor_meta") if isinstance(a, fx.Node) else None
        return m if isinstance(m, TensorMetadata) else None

    def shape(self, a: Any) -> tuple[int, ...] | None:
        """Shape of a tensor argument (batch of 1), () for numbers, None if unknown."""
        if isinstance(a, (int, float, bool)):
            return ()
        if isinstance(a, Tensor):
            return tuple(a.shape)
        m = self.meta(a)
        return tuple(m.shape) if m is not None else None

    def is_tensor(self, a: Any) -> bool:
        """Whether an argument is a tensor (not a tuple of tensors, a shape or a number)."""
        if isinstance(a, Tensor):
            return True
        if not isinstance(a, fx.Node):
            return False
        if "tensor_meta" in a.meta or "type" in a.meta:
            return self.meta(a) is not None
        if a.op == "call_method":
            return a.target not in _TUPLE_METHODS and a.target not in ("dim", "numel", "item", "tolist")
        if a.op == "call_function":
            if a.target is getattr:
                return a.args[1] in ("T", "mT", "H", "mH", "data", "real")
            return a.target not in _TUPLE_FUNCTIONS
        return True

    def dtype(self, node: fx.Node) -> torch.dtype | None:
        """The dtype of a node's value (shape propagation), else read from a cast's arguments."""
        m = self.meta(node)
        if m is not None:
            return m.dtype
        if node.op == "call_method" and node.target in _DTYPE_METHODS:
            return _DTYPE_METHODS[node.target]
        found = [a for a in (*node.args[1:], *node.kwargs.values()) if isinstance(a, torch.dtype)]
        if found:
            return found[0]
        if self.strict:
            return None
        source = self.meta(node.args[0])
        return source.dtype if source is not None else torch.float32  # .to(device): unchanged in planning

    def value(self, a: Any) -> Any:
        """The value of a constant argument (number, tensor, shape), or None if unknown."""
        if not isinstance(a, fx.Node):
            return a
        if VALUE_KEY in a.meta:
            return a.meta[VALUE_KEY]
        if a.op == "get_attr" and self.gm is not None:
            obj = self.gm
            for part in a.target.split("."):
                obj = getattr(obj, part, None)
            return obj
        return None

    def resolve(self, a: Any) -> Any:
        """``a`` with every node replaced by its constant value (tensors on the CPU, where the
        rules measure); None if one is unknown."""
        missing = []

        def one(x):
            v = self.value(x)
            if v is None:
                missing.append(x)
            return v.detach().cpu() if isinstance(v, Tensor) else v

        out = fx.node.map_aggregate(a, lambda x: one(x) if isinstance(x, fx.Node) else x)
        return None if missing else out

    def arg(self, node: fx.Node, name: str, pos: int, default: Any) -> Any:
        """An argument by keyword, else by position, else ``default`` (raw: may be a node)."""
        if name in node.kwargs:
            return node.kwargs[name]
        return node.args[pos] if len(node.args) > pos else default

    def bcast(self, a: Any, node: fx.Node) -> float:
        """sqrt of how many times broadcasting repeats each entry of ``a`` in ``node``'s value."""
        if self.b(a) == 0:
            return 1.0
        sa, so = self.shape(a), self.shape(node)
        if sa is None or so is None:
            return INF if self.strict else 1.0
        return math.sqrt(max(_numel(so) / max(_numel(sa), 1), 1.0))

    def product_factor(self, x: Any, w: Tensor, node: fx.Node) -> float:
        """Norm of ``x -> x * w`` (broadcast): max over entries of x of sqrt(sum of w^2 over its copies)."""
        sx, so = self.shape(x), self.shape(node)
        if sx is None or so is None:
            return float(w.square().sum().sqrt())  # each copy of an entry meets a distinct entry of w
        w2 = w.square().expand(so) if w.dim() <= len(so) else None
        if w2 is None:
            return INF
        padded = (1,) * (len(so) - len(sx)) + tuple(sx)
        dims = [d for d, (a, o) in enumerate(zip(padded, so)) if a == 1 and o > 1]
        total = w2.sum(dim=dims) if dims else w2
        return float(total.max().sqrt()) * (1 + 1e-12) if total.numel() else 0.0


def _first(node: fx.Node) -> Any:
    return node.args[0] if node.args else node.kwargs.get("input", node.kwargs.get("self"))


def _others(node: fx.Node, ctx: RuleContext, accounted: Sequence[Any], shape_only: Sequence[int]) -> list[str]:
    """Names of the input-dependent arguments a rule did not account for."""
    ok = {id(a) for a in accounted if isinstance(a, fx.Node)}
    ok |= {id(node.args[i]) for i in shape_only if i < len(node.args) and ctx.is_tensor(node.args[i])}
    return [n.name for n in node.all_input_nodes if id(n) not in ok and ctx.b(n) > 0]


def unary(node: fx.Node, ctx: RuleContext, c: float, note: str, shape_only: Sequence[int] = ()
          ) -> tuple[float, float, str]:
    """A map of the first argument with constant ``c``; other arguments must be constants.

    ``shape_only``: positions of tensor arguments whose shape or dtype alone is used (``view_as``).
    """
    x = _first(node)
    if bad := _others(node, ctx, [x], shape_only):
        return INF, INF, f"argument(s) {', '.join(bad)} depend on the input; the rule ({note}) does not account for them"
    return c, smul(c, ctx.b(x)), note


def max_min(node: fx.Node, ctx: RuleContext, operands: list[Any], note: str = "pointwise max / min / clamp"
            ) -> tuple[float, float, str]:
    """Each entry of the value is one of the operands' entries (max, min, clamp, select, fill).

    ``|out_i(x) - out_i(y)| <= max_j |a_j,i(x) - a_j,i(y)|``, so the squared norm is at most
    the sum of the operands' (broadcast) squared norms: ``sqrt(sum_j r_j L_j^2)``. (``max(L_a, L_b)``
    is not a bound: ``max(x e1, x e2)`` is ``(relu x, relu x)``, sqrt(2)-Lipschitz.)
    """
    if bad := _others(node, ctx, operands, ()):
        return INF, INF, f"argument(s) {', '.join(bad)} depend on the input; the rule ({note}) does not account for them"
    terms = [smul(ctx.bcast(a, node), ctx.b(a)) for a in operands if a is not None]
    return 1.0, math.sqrt(sum(t * t for t in terms)), note + " (quadrature of the operands)"


def selection(node: fx.Node, ctx: RuleContext, fn: Callable[[Tensor], Tensor] | None, note: str,
              shape_only: Sequence[int] = (), schur: bool = True) -> tuple[float, float, str]:
    """A non-negative linear map of the first argument (selection, padding, replication, averaging).

    Its norm is bounded by Schur's test, ``sqrt(max row sum * max column sum)``, measured by
    autograd on a tensor of ones at the argument's shape (exact for selections: ``sqrt(max copies)``).
    ``fn=None``: uniform replication (expand, repeat), ``sqrt(numel(out) / numel(in))``.
    """
    x = _first(node)
    if bad := _others(node, ctx, [x], shape_only):
        return INF, INF, f"argument(s) {', '.join(bad)} depend on the input; the rule ({note}) does not account for them"
    if fn is None:
        c = ctx.bcast(x, node)
        return c, smul(c, ctx.b(x)), note
    shp = ctx.shape(x)
    if shp is None:
        return INF, INF, f"{note}: input shape unknown"
    t = torch.ones(shp, dtype=torch.float64, requires_grad=True)
    y = fn(t)
    with torch.no_grad():
        rows = y - fn(torch.zeros_like(t))  # constant padding values are not part of the linear map
    (cols,) = torch.autograd.grad(y.sum(), t, allow_unused=True)
    if cols is None or rows.numel() == 0:
        return 0.0, 0.0, note
    c = math.sqrt(max(float(rows.max()), 0.0) * float(cols.max())) * (1 + 1e-12)
    return c, smul(c, ctx.b(x)), note


def discontinuous(node: fx.Node, ctx: RuleContext, why: str) -> tuple[float, float, str]:
    """No finite bound: the operation jumps (rounding, comparisons, indices)."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return INF, INF, f"discontinuous: {name} ({why})"

