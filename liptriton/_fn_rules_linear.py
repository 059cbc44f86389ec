"""The rules of the linear arithmetic nodes (:mod:`liptriton._fn_rules`): sums and differences,
products and quotients by constants, products by constant matrices (``@``, ``F.linear``), each
counting broadcast replication. Two input-dependent factors have no bound (not globally
Lipschitz)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from liptriton._fn_rules_basic import INF, discontinuous, smul

__all__ = ["add_rule", "matmul_rule", "mul_rule"]


def add_rule(node, ctx):
    """a + alpha * b and a - alpha * b, with broadcasting."""
    a, b = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    alpha = node.kwargs.get("alpha", node.args[2] if len(node.args) > 2 else 1.0)
    if ctx.b(alpha) > 0:
        return INF, INF, "alpha depends on the input"
    alpha = abs(float(ctx.value(alpha))) if not isinstance(alpha, (int, float)) else abs(alpha)
    if ctx.b(a) == 0 and ctx.b(b) == 0:
        return 0.0, 0.0, "constant"
    bound = smul(ctx.bcast(a, node), ctx.b(a)) + smul(alpha * ctx.bcast(b, node), ctx.b(b))
    return 1.0, bound, "sum (broadcast replication counted)"


def mul_rule(node, ctx, divide: bool = False):
    """x * w or x / w with w a number or a constant tensor (broadcast counted); two input-dependent factors: inf."""
    x, y = node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")
    if node.kwargs.get("rounding_mode") is not None:
        return discontinuous(node, ctx, f"division with rounding_mode={node.kwargs['rounding_mode']!r}")
    bx, by = ctx.b(x), ctx.b(y)
    if bx > 0 and by > 0:
        return INF, INF, "product of two input-dependent factors (not globally Lipschitz)"
    if divide and by > 0:
        return INF, INF, "division by an input-dependent value (not globally Lipschitz)"
    if by > 0:
        x, y = y, x
    w = ctx.value(y)
    if w is None:
        return INF, INF, "factor is a tensor certify could not evaluate"
    if isinstance(w, bool):
        w = float(w)
    if isinstance(w, (int, float)):
        if divide and w == 0:
            return INF, INF, "division by zero"
        c = 1.0 / abs(w) if divide else abs(w)
        return c, smul(c * ctx.bcast(x, node), ctx.b(x)), "scalar"
    if not isinstance(w, Tensor) or w.is_complex():
        return INF, INF, f"factor of type {type(w).__name__} has no rule"
    w = w.detach().double()
    if divide:
        if bool((w == 0).any()):
            return INF, INF, "division by a tensor with zero entries"
        w = 1.0 / w
    c = ctx.product_factor(x, w, node)
    return c, smul(c, ctx.b(x)), "product with a constant tensor (per-entry replication counted)"


def matmul_rule(node, ctx):
    """x @ W, W @ x, F.linear(x, W, b): W constant; two input-dependent operands: inf."""
    linear = node.target is F.linear
    a = node.args[0]
    w_arg = ctx.arg(node, "weight", 1, None) if linear else (node.args[1] if len(node.args) > 1 else None)
    extra = [ctx.arg(node, "bias", 2, None)] if linear else []
    if any(ctx.b(e) > 0 for e in extra):
        return INF, INF, "bias depends on the input"
    x, w = (a, w_arg) if ctx.b(w_arg) == 0 else (w_arg, a)
    if ctx.b(w) > 0:
        return INF, INF, "product of two input-dependent matrices (not globally Lipschitz)"
    value = ctx.value(w)
    if not isinstance(value, Tensor):
        return INF, INF, "matrix certify could not evaluate"
    m = value.detach().double()
    m = m.reshape(-1, 1) if m.dim() == 1 else m.reshape(-1, *m.shape[-2:])
    norms = torch.linalg.matrix_norm(m, 2)  # (k,) for batched matrices, broadcast: sqrt(sum_k ||W_k||^2)
    c = float(norms.square().sum().sqrt()) * (1 + 1e-12)
    return c, smul(c, ctx.b(x)), "float64 SVD of the constant matrix"
