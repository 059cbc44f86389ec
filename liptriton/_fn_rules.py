"""Lipschitz rules of torch.fx ``call_function`` / ``call_method`` / ``get_attr``-like nodes.

Used by :func:`liptriton._propagate.propagate`. A rule takes the node and a :class:`RuleContext`
and returns ``(local, bound, note)``: the node's own constant, the bound of its value as a
function of the model input, and how it was obtained. Sound by construction:

* a rule accounts for every argument whose value depends on the input; the unary rules
  (:func:`unary`) refuse (``inf``) a node whose *other* arguments depend on the input;
* operands that broadcast are counted with their replication (``sqrt(numel(out) / numel(a))``);
* discontinuous operations (rounding, integer and bool casts, comparisons, argmax, random
  draws) have no finite bound, with the reason; so has every integer or bool valued node that
  depends on the input (see ``propagate``);
* an operation without a rule has no finite bound (``RULES`` / ``METHOD_RULES`` list them all).

The tables are keyed by the callable (functions) or the method name (methods).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from liptriton import _fn_rules_select as S
from liptriton._fn_rules_basic import (
    INF,
    RuleContext,
    discontinuous,
    max_min,
    smul,
    unary,
)
from liptriton._fn_rules_linear import add_rule as _add
from liptriton._fn_rules_linear import matmul_rule as _matmul
from liptriton._fn_rules_linear import mul_rule as _mul
from liptriton.bounds.activations import FUNCTION_CONSTANTS

__all__ = ["METHOD_RULES", "RANDOM", "RANDOM_METHODS", "RULES", "RuleContext", "function_rule", "smul"]

Rule = Callable[[fx.Node, RuleContext], tuple[float, float, str]]


def _const(c: float, note: str) -> Rule:
    return lambda node, ctx: unary(node, ctx, c, note)


def _shape_only(node, ctx):
    return 0.0, 0.0, "depends only on the input's shape"


def _cast(node, ctx):
    """Casts: the identity to float32 / float64, discontinuous to integers and bool (by the result's dtype)."""
    dtype = ctx.dtype(node)
    if dtype is None:
        return INF, INF, "cast to an unknown dtype"
    if dtype in (torch.float64, torch.float32):
        return unary(node, ctx, 1.0, f"cast to {dtype} (identity up to rounding)", shape_only=(1,))
    if dtype.is_floating_point:
        return INF, INF, f"cast to {dtype}: rounds to a coarse grid (discontinuous at float64 resolution)"
    return INF, INF, f"cast to {dtype}: integer / bool values are discontinuous in the input"


def _dropout(node, ctx):
    training = ctx.arg(node, "training", 2, True)
    p = ctx.arg(node, "p", 1, 0.5)
    if training and p > 0:
        return INF, INF, "dropout with training=True is random (pass training=self.training)"
    return unary(node, ctx, 1.0, "dropout in eval: identity")


def _leaky_relu(node, ctx):
    slope = ctx.arg(node, "negative_slope", 1, 0.01)
    return unary(node, ctx, max(1.0, abs(float(slope))), "max(1, |slope|)")


def _elu(node, ctx):
    return unary(node, ctx, max(1.0, abs(float(ctx.arg(node, "alpha", 1, 1.0)))), "max(1, |alpha|)")


def _threshold(node, ctx):
    if ctx.arg(node, "threshold", 1, None) != ctx.arg(node, "value", 2, None):
        return INF, INF, "threshold with value != threshold jumps (discontinuous)"
    return unary(node, ctx, 1.0, "continuous threshold (= max(x, t))")


def _cat(node, ctx):
    parts = node.args[0] if node.args else node.kwargs.get("tensors", ())
    if isinstance(parts, fx.Node):  # a tuple node (chunk, split): its bound is that of its concatenation
        return 1.0, ctx.b(parts), "concatenation of a tuple"
    return 1.0, math.sqrt(sum(ctx.b(p) ** 2 for p in parts)), "quadrature"


def _reduce_sum(node, ctx, mean: bool):
    x = node.args[0]
    shp = ctx.shape(x)
    if shp is None:
        return INF, INF, "input shape unknown"
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if ctx.b(dims) > 0:
        return INF, INF, "dims depend on the input"
    dims = range(len(shp)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    n = math.prod(shp[d] for d in {d % len(shp) for d in dims} if d != 0) if shp else 1
    c = 1.0 / math.sqrt(n) if mean else math.sqrt(n)
    return unary(node, ctx, c, f"{'mean' if mean else 'sum'} of {n} entries")


def _norm(node, ctx):
    p = ctx.arg(node, "p" if node.target is not torch.linalg.vector_norm else "ord", 1, 2)
    if p not in (2, 2.0, None, "fro"):
        return INF, INF, f"{p}-norm: no rule (only the l2 norm, 1-Lipschitz)"
    return unary(node, ctx, 1.0, "l2 norm over groups (1-Lipschitz)")


def _tuple_identity(node, ctx):
    return unary(node, ctx, 1.0, "parts of the input")


def _attribute(node, ctx):
    attr = node.args[1]
    if attr in ("shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout", "is_sparse"):
        return 0.0, 0.0, "metadata (not the values)"
    if attr == "indices":
        return discontinuous(node, ctx, "indices of max / min / sort / topk")
    if attr in ("T", "mT", "H", "mH", "data", "real", "values"):
        return unary(node, ctx, 1.0, f".{attr} (a permutation / the values)")
    return INF, INF, f"no Lipschitz rule for attribute .{attr}"


RULES: dict[Any, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def _register(rule: Rule, functions: tuple = (), methods: tuple = ()) -> None:
    for f in functions:
        RULES[f] = rule
    for m in methods:
        METHOD_RULES[m] = rule
        METHOD_RULES[m + "_"] = rule  # in-place variants: same values (aliasing is checked by propagate)


_IDENTITY = (torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
             torch.movedim, torch.t, torch.flip, torch.roll, torch.narrow, torch.select, torch.diagonal,
             torch.tril, torch.triu, F.pixel_shuffle, F.pixel_unshuffle, torch.unflatten, operator.pos,
             torch.swapaxes, torch.swapdims, torch.adjoint, torch.atleast_1d, torch.atleast_2d, torch.atleast_3d)
_IDENTITY_METHODS = ("view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                     "clone", "detach", "t", "movedim", "flip", "roll", "narrow", "select", "diagonal", "tril", "triu",
                     "unflatten", "view_as", "reshape_as", "cpu", "cuda", "item", "tolist", "swapaxes", "swapdims")
_register(lambda n, c: unary(n, c, 1.0, "shape op / selection", shape_only=tuple(range(1, 8))),
          _IDENTITY, _IDENTITY_METHODS)
_register(_tuple_identity, (torch.chunk, torch.split, torch.unbind, torch.tensor_split),
          ("chunk", "split", "unbind", "tensor_split"))
_register(_const(1.0, "1-Lipschitz"),
          (torch.relu, F.relu, torch.tanh, F.tanh, torch.abs, operator.neg, torch.neg, operator.abs, F.relu6,
           F.hardtanh, F.softplus, F.softsign, F.logsigmoid, F.tanhshrink, F.softshrink, torch.sin, torch.cos,
           torch.atan, F.softmax, torch.softmax, torch.nn.functional.celu, F.hardsigmoid),
          ("relu", "tanh", "abs", "neg", "softmax", "sin", "cos", "atan"))
for _fn, _c in FUNCTION_CONSTANTS.items():  # the activations' constants, stated once (liptriton.bounds.activations)
    _register(_const(_c, "max |f'|"), (_fn,))
_register(_const(FUNCTION_CONSTANTS[torch.sigmoid], "max |f'|"), (), ("sigmoid",))
_register(_leaky_relu, (F.leaky_relu,))
_register(_elu, (F.elu,))
_register(_threshold, (F.threshold,))
_register(_dropout, (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout))
_register(_cast, (), ("to", "type", "type_as", "float", "double", "half", "bfloat16", "int", "long", "short",
                      "bool", "byte", "char"))
_register(_add, (operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub),
          ("add", "sub"))
_register(_mul, (operator.mul, operator.imul, torch.mul), ("mul",))
_register(lambda n, c: _mul(n, c, divide=True), (operator.truediv, operator.itruediv, torch.div, torch.true_divide),
          ("div", "true_divide"))
_register(_matmul, (operator.matmul, torch.matmul, torch.mm, torch.bmm, F.linear), ("matmul", "mm", "bmm"))
_register(_cat, (torch.cat, torch.stack, torch.concat, torch.hstack, torch.vstack))
_register(lambda n, c: _reduce_sum(n, c, False), (torch.sum,), ("sum",))
_register(lambda n, c: _reduce_sum(n, c, True), (torch.mean,), ("mean",))
_register(S.extremum, (torch.max, torch.min), ("max", "min"))
_register(_const(1.0, "max / min over groups (1-Lipschitz)"),
          (torch.amax, torch.amin, torch.logsumexp), ("amax", "amin", "logsumexp"))
_register(lambda n, c: max_min(n, c, [n.args[0], n.args[1] if len(n.args) > 1 else n.kwargs.get("other")]),
          (torch.maximum, torch.minimum, torch.fmax, torch.fmin), ("maximum", "minimum", "fmax", "fmin"))
_register(S.clamp, (torch.clamp, torch.clip, torch.clamp_min, torch.clamp_max),
          ("clamp", "clip", "clamp_min", "clamp_max"))
_register(S.where, (torch.where,), ("where",))
_register(S.masked_fill, (torch.masked_fill,), ("masked_fill",))
_register(S.masked_select, (torch.masked_select,), ("masked_select",))
_register(S.gather_like, (torch.gather, torch.index_select, torch.take, torch.take_along_dim),
          ("gather", "index_select", "take", "take_along_dim"))
_register(S.pad, (F.pad,))
_register(S.expand, (torch.broadcast_to, torch.tile), ("expand", "expand_as", "repeat", "tile", "broadcast_to"))
_register(_norm, (torch.norm, torch.linalg.vector_norm), ("norm",))
_register(S.pool, (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                  F.adaptive_avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                  F.adaptive_max_pool2d, F.adaptive_max_pool3d))
_register(_shape_only, (torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like),
          ("new_zeros", "new_ones", "new_empty", "new_full", "size", "dim", "numel", "stride", "element_size",
           "get_device", "is_contiguous", "is_floating_point", "nelement", "ndimension"))
# random draws: no bound even when their arguments are constants (checked before anything else)
RANDOM = {torch.rand_like, torch.randn_like, torch.randint_like, torch.bernoulli, torch.rand, torch.randn,
          torch.randint, torch.randperm, torch.normal, torch.multinomial, torch.poisson, F.rrelu}
RANDOM_METHODS = {m: True for m in ("bernoulli", "bernoulli_", "normal_", "uniform_", "random_", "exponential_",
                                    "geometric_", "cauchy_", "log_normal_", "multinomial")}
_register(lambda n, c: discontinuous(n, c, "rounds to integers"),
          (torch.round, torch.floor, torch.ceil, torch.trunc, torch.fix, torch.frac, torch.floor_divide,
           operator.floordiv, operator.mod, torch.remainder, torch.fmod),
          ("round", "floor", "ceil", "trunc", "fix", "frac", "floor_divide", "remainder", "fmod"))
_register(lambda n, c: discontinuous(n, c, "sign / step function"),
          (torch.sign, torch.sgn, torch.heaviside, torch.signbit), ("sign", "sgn", "heaviside", "signbit"))
_register(lambda n, c: discontinuous(n, c, "comparison (bool valued)"),
          (operator.lt, operator.le, operator.gt, operator.ge, operator.eq, operator.ne, torch.lt, torch.le,
           torch.gt, torch.ge, torch.eq, torch.ne, torch.isclose, torch.isfinite, torch.isnan, torch.isinf,
           torch.logical_and, torch.logical_or, torch.logical_not, torch.logical_xor, operator.and_,
           operator.or_, operator.xor, operator.invert),
          ("lt", "le", "gt", "ge", "eq", "ne", "isclose", "isfinite", "isnan", "isinf", "logical_and",
           "logical_or", "logical_not", "logical_xor"))
_register(lambda n, c: discontinuous(n, c, "integer valued (indices / counts)"),
          (torch.argmax, torch.argmin, torch.argsort, torch.nonzero, torch.bucketize, torch.searchsorted,
           torch.unique, torch.bincount, torch.count_nonzero, F.one_hot, torch.topk, torch.sort),
          ("argmax", "argmin", "argsort", "nonzero", "unique", "bincount", "count_nonzero", "topk", "sort"))


def _stochastic_depth(node, ctx):
    """torchvision.ops.stochastic_depth(input, p, mode, training): identity unless training with p > 0."""
    training = ctx.arg(node, "training", 3, True)
    p = ctx.arg(node, "p", 1, 0.5)
    if training and p > 0:
        return INF, INF, "stochastic depth with training=True is random (use the StochasticDepth module)"
    return unary(node, ctx, 1.0, "stochastic depth in eval: identity")


def _normalization(node, ctx):
    return INF, INF, (f"{getattr(node.target, '__name__', node.target)} divides by a data-dependent norm (no finite "
                      "bound); use BatchLipNorm / LayerCentering")


_register(_normalization, (F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, F.rms_norm))


# functions of optional libraries, by (module, name): recognized without importing them
NAMED_RULES: dict[tuple[str, str], Rule] = {
    ("torchvision.ops.stochastic_depth", "stochastic_depth"): _stochastic_depth,
}


def function_rule(node: fx.Node, ctx: RuleContext) -> tuple[float, float, str]:
    """(local, bound, note) of a ``call_function`` / ``call_method`` node; ``inf`` when no rule applies."""
    if node.op == "call_method":
        rule = METHOD_RULES.get(node.target)
        if rule is None:
            return INF, INF, f"no Lipschitz rule for method .{node.target}()"
        return rule(node, ctx)
    if node.target is getattr:
        return _attribute(node, ctx)
    if node.target is operator.getitem:
        return S.getitem(node, ctx)
    try:
        rule = RULES.get(node.target)
    except TypeError:  # an unhashable callable
        rule = None
    if rule is None:
        rule = NAMED_RULES.get((getattr(node.target, "__module__", None), getattr(node.target, "__name__", None)))
    if rule is None:
        return INF, INF, f"no Lipschitz rule for function {getattr(node.target, '__name__', node.target)}"
    return rule(node, ctx)
