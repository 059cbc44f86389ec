"""Residual sums of a traced model become learnable convex combinations (step 2 of
:func:`liptriton.lipschitzify`): ``f(x) + g(x)`` -> :class:`liptriton.LipResidual`, whose constant
is the largest of its terms' whatever its weight, with the skip connection weighted first."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
from torch import fx

from liptriton._origin import INSERTED
from liptriton.rules import is_constrained

if TYPE_CHECKING:
    from liptriton.convert import ConversionReport

__all__ = ["SKIP_WEIGHT", "depends_on_input", "depth", "rewrite_residuals"]

_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_SUB = {operator.sub, operator.isub, torch.sub, "sub", "sub_"}


_METADATA = ("shape", "dtype", "device", "ndim", "layout", "is_cuda")


def depends_on_input(gm: fx.GraphModule) -> set[str]:
    """Names of the nodes whose value depends on the values of the model's inputs.

    Shapes are not values: ``x.size()``, ``x.shape``, ``x.dim()`` and everything computed from them
    alone (``floordiv`` of a channel count, ``eq`` / ``_assert`` checks, the shape given to
    ``expand`` or ``view``) are constants for a given input size.
    """
    depends: set[str] = set()
    for node in gm.graph.nodes:
        metadata = (node.op == "call_method" and node.target in ("size", "dim", "numel")) or (
            node.op == "call_function" and node.target is getattr and node.args[1] in _METADATA)
        if node.op == "placeholder" or (not metadata and any(a.name in depends for a in node.all_input_nodes)):
            depends.add(node.name)
    return depends


# The initial weight of a residual sum's shallower term (the skip connection: fewer constrained layers
# from the input) in its convex combination. Any weight keeps the bound; this one keeps the signal: at
# 0.5 the identity path of torchvision's resnet18 (8 blocks) is scaled by 2^-8 and the gradient reaching
# the input is 2.6e-4 of k at initialization; at 0.9, 1.7e-2 (see perf/NOTES.md, "trainable by default").
SKIP_WEIGHT = 0.9


def _skip_weight(depth_a: int, depth_b: int) -> float:
    """The initial weight of the first term ``a``: SKIP_WEIGHT when it is the shallower, 0.5 on a tie."""
    if depth_a == depth_b:
        return 0.5
    return SKIP_WEIGHT if depth_a < depth_b else 1.0 - SKIP_WEIGHT


def rewrite_residuals(gm: fx.GraphModule, report: ConversionReport) -> None:
    """Replace every sum (or difference) of two input-dependent values in ``gm`` by a convex
    combination module, recording each change in ``report``."""
    from liptriton.nn.containers import LipResidual
    from liptriton.nn.inserted import ConvexSum

    depends = depends_on_input(gm)
    layers = _layer_depths(gm)
    count = 0
    for node in list(gm.graph.nodes):
        is_add = (node.op == "call_function" and node.target in _ADD) or (
            node.op == "call_method" and node.target in ("add", "add_", "sub", "sub_"))
        if not is_add or len(node.args) != 2:
            continue
        a, b = node.args
        if not all(isinstance(t, fx.Node) and t.name in depends for t in (a, b)):
            continue
        if node.kwargs.get("alpha", 1) != 1:
            report.block(node.name, "torch.add with alpha: not rewritten")
            continue
        sub = node.target in _SUB
        skip = _skip_weight(layers[a.name], layers[b.name])
        mod = ConvexSum((1.0, -1.0)) if sub else LipResidual(weight=skip)
        name = f"lip_residual_{count}"
        count += 1
        gm.add_submodule(name, mod)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (a, b))
        new.meta[INSERTED] = "difference" if sub else "sum"
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        depends.add(new.name)
        layers[new.name] = layers.pop(node.name)
        weights = "" if sub else f", initial weights {skip:.2g} / {1 - skip:.2g}"
        report.change(node.name, "difference" if sub else "sum",
                      f"{type(mod).__name__} ({name}): convex combination{weights}")


def _layer_depths(gm: fx.GraphModule) -> dict[str, int]:
    """For every node, the largest number of constrained layers on a path from an input to it."""
    depths: dict[str, int] = {}
    for node in gm.graph.nodes:
        d = max((depths[a.name] for a in node.all_input_nodes), default=0)
        if node.op == "call_module" and is_constrained(gm.get_submodule(node.target)):
            d += 1
        depths[node.name] = d
    return depths


def depth(gm: fx.GraphModule) -> int:
    """The largest number of constrained layers on a path from an input to the output (>= 1)."""
    return max(max(_layer_depths(gm).values(), default=1), 1)
