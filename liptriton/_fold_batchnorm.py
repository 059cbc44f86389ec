"""lipschitzify's first pass: fold each eval-mode BatchNorm into the Linear / Conv that feeds it."""

from __future__ import annotations

import torch
from torch import nn

from liptriton._origin import FOLDED
from liptriton.rules import is_constrained

__all__ = ["fold_batchnorm"]

_BN = nn.modules.batchnorm._BatchNorm


def fold_batchnorm(gm, report, mode: str) -> None:
    """Fold each eval-mode BatchNorm into the Linear / Conv (not transposed) that alone feeds it.

    ``w' = w * gamma / sqrt(var + eps)`` per output channel, ``b' = (b - mean) gamma / sqrt(var + eps) + beta``.
    Nothing is done unless ``mode == "fold"``; BatchNorms left are handled by their rule (:mod:`liptriton.rules`).
    """
    if mode != "fold":
        return
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(bn := gm.get_submodule(node.target), _BN):
            continue
        prev = node.args[0]
        if not (getattr(prev, "op", None) == "call_module" and len(prev.users) == 1 and bn.running_var is not None):
            continue
        layer = gm.get_submodule(prev.target)
        if not is_constrained(layer) or getattr(layer, "transposed", False) or hasattr(layer, "parametrizations"):
            continue
        with torch.no_grad():
            scale = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
            scale = scale / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
            bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
            layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))).to(layer.weight.dtype))
            new_bias = ((bias - bn.running_mean) * scale + shift).to(layer.weight.dtype)
            if layer.bias is None:
                layer.bias = nn.Parameter(new_bias)
            else:
                layer.bias.copy_(new_bias)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        gm.meta.setdefault(FOLDED, {})[prev.target] = node.target  # save writes the bias back into the BN
        report.change(node.target, type(bn).__name__, f"folded into {prev.target}")
    gm.delete_all_unused_submodules()
