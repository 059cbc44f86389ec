"""Rules of the operations that select, compare or combine entries: max / min / clamp with
tensor bounds, where, masked fill, indexing (basic, advanced, gather), padding, replication and
pooling. Part of :mod:`liptriton._fn_rules` (the tables are there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import fx

from liptriton._fn_rules_basic import INF, discontinuous, max_min, selection, unary

__all__ = ["clamp", "expand", "extremum", "gather_like", "getitem", "masked_fill", "masked_select", "pad", "pool",
           "where"]


def extremum(node, ctx):
    """torch.max / min: binary (other tensor) is max_min; a reduction (all, or over dim) is 1-Lipschitz."""
    other = node.kwargs.get("other", node.args[1] if len(node.args) > 1 else None)
    if isinstance(other, fx.Node) and ctx.is_tensor(other):
        return max_min(node, ctx, [node.args[0], other])
    return unary(node, ctx, 1.0, "max / min over groups (1-Lipschitz)")


def clamp(node, ctx):
    names = ("min", "max") if node.target not in (torch.clamp_min, torch.clamp_max, "clamp_min", "clamp_max",
                                                   "clamp_min_", "clamp_max_") else ("min",)
    bounds = [ctx.arg(node, name, i + 1, None) for i, name in enumerate(names)]
    return max_min(node, ctx, [node.args[0], *bounds])


def where(node, ctx):
    args = list(node.args) + [node.kwargs.get(k) for k in ("condition", "input", "other") if k in node.kwargs]
    if node.op == "call_method":  # x.where(cond, y)
        cond, a, b = args[1], args[0], args[2] if len(args) > 2 else None
    elif len(args) == 1:
        return discontinuous(node, ctx, "torch.where(cond) returns indices")
    else:
        cond, a, b = args[0], args[1], args[2]
    if ctx.b(cond) > 0:
        return INF, INF, "data-dependent condition: discontinuous unless proven otherwise"
    return max_min(node, ctx, [a, b], note="selection by a constant condition")


def masked_fill(node, ctx):
    mask, value = ctx.arg(node, "mask", 1, None), ctx.arg(node, "value", 2, None)
    if ctx.b(mask) > 0:
        return INF, INF, "data-dependent mask: discontinuous unless proven otherwise"
    return max_min(node, ctx, [node.args[0], value], note="masked fill with a constant mask")


def masked_select(node, ctx):
    if ctx.b(ctx.arg(node, "mask", 1, None)) > 0:
        return INF, INF, "data-dependent mask: discontinuous unless proven otherwise"
    return unary(node, ctx, 1.0, "selection by a constant mask")


def getitem(node, ctx):
    src, index = node.args[0], node.args[1]
    if isinstance(src, (tuple, list)) or not ctx.is_tensor(src):  # a tuple of tensors (chunk, split, max...)
        if ctx.b(index) > 0:
            return INF, INF, "index depends on the input"
        return 1.0, ctx.b(src), "element of a tuple"
    items = index if isinstance(index, tuple) else (index,)
    flat = [v for i in items for v in ((i.start, i.stop, i.step) if isinstance(i, slice) else (i,))]
    if any(ctx.b(v) > 0 for v in flat):
        return INF, INF, "indexing with input-dependent indices (discontinuous)"
    if all(v is None or v is Ellipsis or isinstance(v, (int, fx.Node)) and not ctx.is_tensor(v) for v in flat):
        return unary(node, ctx, 1.0, "basic indexing (a selection)", shape_only=(1,))
    resolved = ctx.resolve(index)
    if resolved is None:
        return INF, INF, "advanced indexing with indices certify could not evaluate"
    return selection(node, ctx, lambda t: t[resolved], "advanced indexing with constant indices")


def gather_like(node, ctx):
    name = getattr(node.target, "__name__", node.target)
    index_pos = {"gather": 2, "index_select": 2, "take": 1, "take_along_dim": 1}.get(name, 1)
    idx = ctx.arg(node, "index" if name != "take_along_dim" else "indices", index_pos, None)
    if ctx.b(idx) > 0:
        return INF, INF, "indexing with input-dependent indices (discontinuous)"
    args = [ctx.resolve(a) for a in node.args[1:]]
    kwargs = {k: ctx.resolve(v) for k, v in node.kwargs.items()}
    if any(a is None for a in args):
        return INF, INF, "indices certify could not evaluate"
    fn = getattr(torch, name)
    return selection(node, ctx, lambda t: fn(t, *args, **kwargs), f"{name} with constant indices")


def pad(node, ctx):
    pad = ctx.resolve(ctx.arg(node, "pad", 1, None))
    mode = ctx.arg(node, "mode", 2, "constant")
    if pad is None:
        return INF, INF, "padding certify could not evaluate"
    return selection(node, ctx, lambda t: F.pad(t, pad, mode), f"{mode} padding", shape_only=(1,))


def expand(node, ctx):
    return selection(node, ctx, None, "replication (expand / repeat)", shape_only=tuple(range(1, 8)))


def pool(node, ctx):
    from liptriton.bounds.pooling import adaptive_windows_bound, window_overlap

    fn, args = node.target, node.args
    name = fn.__name__
    if "max" in name:
        if "adaptive" in name:
            shp = ctx.shape(args[0])
            nd = int(name[-2])
            if shp is None:
                return INF, INF, "input shape unknown"
            out = ctx.arg(node, "output_size", 1, None)
            outs = tuple(out) if isinstance(out, (tuple, list)) else (out,) * nd
            return unary(node, ctx, adaptive_windows_bound(tuple(shp[-nd:]), outs, False), "overlap")
        kw = dict(zip(("kernel_size", "stride", "padding", "dilation"), args[1:]), **node.kwargs)
        c = math.sqrt(window_overlap(kw["kernel_size"], kw.get("stride"), kw.get("dilation", 1), int(name[-2])))
        return unary(node, ctx, c, "overlap")
    return selection(node, ctx, lambda t: fn(t, *args[1:], **node.kwargs), "Schur", schur=True)
