"""Writes in place in a traced graph: which nodes write into their input, which nodes may alias
the same storage, and how :func:`liptriton._propagate.propagate` accounts for a write (the written
tensor's bound follows the write; a tensor aliasing it and read afterwards gets ``inf`` unless
the write cannot increase any entry's change).
"""

from __future__ import annotations

import inspect
import math
import operator

import torch
from torch import fx, nn

from liptriton._fn_rules_basic import INF, RuleContext, smul

__all__ = ["aliases", "check_inplace", "is_inplace"]


_VIEW_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze", "t",
                 "movedim", "view_as", "reshape_as", "expand", "expand_as", "narrow", "select", "diagonal",
                 "unflatten", "chunk", "split", "unbind", "tensor_split", "detach", "to", "type_as", "float",
                 "double", "as_strided", "swapaxes", "swapdims", "unfold", "real"}
_VIEW_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
                   torch.movedim, torch.t, torch.narrow, torch.select, torch.diagonal, torch.chunk, torch.split,
                   torch.unbind, torch.tensor_split, torch.unflatten, operator.getitem, getattr,
                   torch.broadcast_to, torch.swapaxes, torch.swapdims, torch.as_strided, torch.detach}
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.setitem, operator.iand, operator.ior, operator.ixor}
# in-place ops that map each entry to a function of that same entry with |slope| <= 1, or to a constant:
# every tensor aliasing the target keeps a valid bound (an entry's change never grows)
_ENTRYWISE_INPLACE = {"relu_", "tanh_", "sigmoid_", "abs_", "neg_", "clamp_", "clip_", "clamp_min_", "clamp_max_",
                      "add_", "sub_", "mul_", "div_", "fill_", "zero_", "masked_fill_", "hardtanh_", "leaky_relu_",
                      "elu_", "relu", "relu6", "hardtanh", "leaky_relu", "elu", "celu", "selu", "dropout", "threshold",
                      "iadd", "isub", "imul", "itruediv", "setitem"}


def is_inplace(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether ``node`` writes into its first argument."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_module":
        return bool(getattr(gm.get_submodule(node.target), "inplace", False))
    if node.op == "call_function":
        if node.target in _INPLACE_FUNCTIONS:
            return True
        name = getattr(node.target, "__name__", "")
        if name.endswith("_") and not name.startswith("__"):
            return True
        if node.kwargs.get("inplace"):
            return True
        try:
            bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
        except (TypeError, ValueError):
            return False
        return bool(bound.arguments.get("inplace", False))
    return False


def _advanced(index) -> bool:
    """Whether an index is advanced (lists, tensors): the result is a copy, not a view."""
    items = index if isinstance(index, tuple) else (index,)
    for i in items:
        if isinstance(i, (list, torch.Tensor)):
            return True
        if isinstance(i, fx.Node) and RuleContext.meta(i) is not None:  # a tensor index
            return True
    return False


def aliases(gm: fx.GraphModule) -> dict[str, str]:
    """Union-find root of every node over the ops that may return a view of (or write into) their input."""
    parent: dict[str, str] = {}

    def root(n: str) -> str:
        while parent.get(n, n) != n:
            n = parent[n]
        return n

    for node in gm.graph.nodes:
        parent.setdefault(node.name, node.name)
        src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if src is None:
            continue
        view = (node.op == "call_method" and node.target in _VIEW_METHODS) or (
            node.op == "call_function" and node.target in _VIEW_FUNCTIONS)
        if node.target is operator.getitem and _advanced(node.args[1]):
            view = False  # advanced indexing copies
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            view = isinstance(mod, (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                                    nn.Dropout3d, nn.AlphaDropout))
        if view or is_inplace(node, gm):
            parent[root(node.name)] = root(src.name)
    return {n: root(n) for n in parent}


def check_inplace(node: fx.Node, gm: fx.GraphModule, local: float, bound: float, ctx: RuleContext,
                   bounds: dict[str, float], order: dict[str, int], groups: dict[str, str]) -> tuple[float, float, str]:
    """Account for a write into a tensor that other nodes may still read (or "" if nothing to do).

    The target itself now holds the node's value (its bound becomes the node's bound); other
    tensors aliasing it keep a valid bound only if the write maps each entry to a function of
    itself with slope <= 1 (``relu_``, ``clamp_`` by constants, ``mul_`` by |c| <= 1...).
    """
    target = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    if target is None or not is_inplace(node, gm) or all(ctx.b(a) == 0 for a in node.all_input_nodes):
        return local, bound, ""
    if node.target is operator.setitem:  # x[idx] = y: entries of x replaced by (copies of) y
        index, value = node.args[1], node.args[2]
        if ctx.b(index) > 0:
            return INF, INF, "writes at input-dependent indices"
        copies = ctx.bcast(value, target) if ctx.b(value) > 0 else 1.0
        bound = math.sqrt(ctx.b(target) ** 2 + smul(copies, ctx.b(value)) ** 2)
        local = 1.0
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if node.op == "call_module":
        name = "relu" if local <= 1.0 else type(gm.get_submodule(node.target)).__name__
    others = [a for a in node.all_input_nodes if a is not target and ctx.b(a) > 0]
    entrywise = name in _ENTRYWISE_INPLACE and not others and local <= 1.0
    bounds[target.name] = max(bounds[target.name], bound) if not entrywise else bounds[target.name]
    if entrywise:
        return local, bound, ""
    here, group = order[node.name], groups[target.name]
    stale = [n.name for n in gm.graph.nodes if groups.get(n.name) == group and n is not target and n is not node
             and order[n.name] < here and any(order[u.name] > here for u in n.users)]
    if stale:
        for name_ in stale:
            bounds[name_] = INF
        return INF, INF, f"writes in place into {target.name}, read afterwards through {', '.join(stale)}"
    return local, bound, ""
