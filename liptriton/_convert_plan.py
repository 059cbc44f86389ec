"""The parts of :func:`liptriton.lipschitzify` that look at the traced graph as a whole: the real
shapes of an example forward, the activation policy, the weights the conversion leaves
unconstrained, and how much signal the planned network keeps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from liptriton._origin import INSERTED

__all__ = ["RELU_FAMILY", "explain_blockers", "record_example_shapes", "replace_relu_family", "signal_ratio", "unconstrained_weights"]

# Activations that zero (or squash) half of their input: they lose energy at every layer, so a deep
# network of orthogonal layers and these activations has vanishing gradients at initialization.
RELU_FAMILY = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
               nn.Hardswish, nn.Softplus, nn.PReLU, nn.RReLU)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu_, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.celu, F.selu,
                   torch.selu, F.gelu, F.silu, F.mish, F.hardswish, F.softplus}
_RELU_METHODS = {"relu", "relu_"}


def record_example_shapes(gm: fx.GraphModule, example_input: Tensor) -> None:
    """Run one eval-mode forward of ``gm`` (no_grad, one sample) and keep every node's shape and
    dtype (``node.meta['tensor_meta']``) and the values that do not depend on the input, as
    :func:`liptriton.certify` does: the plan then applies certify's shape-dependent rules.

    Args:
        gm: the traced model (before its layers are parametrized: a plain forward).
        example_input: a batch of inputs (its first sample is used).
    """
    from liptriton._certify_checks import record_shapes

    was_training = gm.training
    gm.eval()
    try:
        record_shapes(gm, example_input[:1].detach().clone())
    finally:
        gm.train(was_training)


def _channels(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return int(shape[1]) if shape is not None and len(shape) >= 2 else None


def replace_relu_family(gm: fx.GraphModule, report, depends: set[str]) -> None:
    """Replace every ReLU-family activation (module or functional call) by GroupSort2 on the channels.

    GroupSort2 sorts pairs of channels: a permutation of its input, so it keeps the gradient norm
    where ReLU halves the energy at every layer. It needs an even channel count: an activation on
    an odd number of channels (known from the example forward) is kept and reported as such.

    Args:
        gm: the traced model (rewritten in place).
        report: the :class:`~liptriton.convert.ConversionReport` that records each change.
        depends: names of the nodes that depend on the input (the new nodes are added).
    """
    from liptriton.nn.activations import GroupSort2

    count = 0
    for node in list(gm.graph.nodes):
        if node.name not in depends:
            continue
        if node.op == "call_module":
            hit = isinstance(gm.get_submodule(node.target), RELU_FAMILY)
            what = type(gm.get_submodule(node.target)).__name__ if hit else ""
        elif node.op == "call_function":
            hit = node.target in _RELU_FUNCTIONS
            what = getattr(node.target, "__name__", str(node.target))
        elif node.op == "call_method":
            hit, what = node.target in _RELU_METHODS, f".{node.target}()"
        else:
            hit = False
        if not hit:
            continue
        channels = _channels(node)
        if channels is not None and channels % 2:
            report.change(node.name, what, f"kept: GroupSort2 needs an even channel count, got {channels}")
            continue
        if node.op == "call_module":  # the module itself is replaced (a shared one once), under its own name
            if not isinstance(gm.get_submodule(node.target), GroupSort2):
                parent, _, leaf = node.target.rpartition(".")
                setattr(gm.get_submodule(parent) if parent else gm, leaf, GroupSort2())
                report.change(node.target, what, "GroupSort2: norm-preserving")
            continue
        name = f"lip_groupsort_{count}"
        count += 1
        gm.add_submodule(name, GroupSort2())
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(name, (node.args[0] if node.args else node.kwargs["input"],))
        new.meta.update({k: v for k, v in node.meta.items() if k == "tensor_meta"})
        new.meta[INSERTED] = "activation"
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        depends.add(new.name)
        report.change(node.name, what, f"GroupSort2 ({name}): norm-preserving")
    if count:
        gm.delete_all_unused_submodules()


def unconstrained_weights(gm: nn.Module) -> list[tuple[str, str]]:
    """``(parameter, how it is used)`` for every trainable parameter that no liptriton
    parametrization constrains and whose value can change the model's constant.

    Biases of Linear / Conv layers, parametrized weights and the convex weights that liptriton
    inserts do not change the constant; every other parameter does (a kept BatchNorm's scale, a
    layer-scale factor, a weight used through ``F.linear`` in attention, ...).

    Args:
        gm: the converted model (a GraphModule when traced).

    Returns:
        The list, in module order.
    """
    from liptriton.nn.inserted import ConvexSum

    users: dict[str, str] = {}
    for node in gm.graph.nodes if isinstance(gm, fx.GraphModule) else ():  # (an untraced model: no graph)
        if node.op == "get_attr":
            for user in node.users:
                users.setdefault(node.target, getattr(user.target, "__name__", str(user.target)))
    out = []
    for mod_name, mod in gm.named_modules():
        if isinstance(mod, (ConvexSum, parametrize.ParametrizationList)) or type(mod).__name__ == "LipResidual":
            continue  # (a parametrized tensor is looked at from the module that owns it)
        plists = getattr(mod, "parametrizations", None)
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            full = f"{mod_name}.{name}" if mod_name else name
            if name == "bias" and isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
                continue
            if plists is not None and name in plists:
                continue
            how = users.get(full)
            out.append((full, f"used by {how} (not constrained)" if how else f"in {type(mod).__name__} (not "
                        "constrained: its current value enters the bound)"))
        if plists is not None:
            for pname, plist in plists.items():
                if not any(hasattr(p, "lipschitz_bound") for p in plist):
                    out.append((f"{mod_name}.{pname}", "parametrized, but not by liptriton"))
    return out


def signal_ratio(model: nn.Module, example_input: Tensor) -> float:
    """The gradient norm ``||J^T g||`` at the first example input for a random unit output
    direction ``g`` (J the Jacobian of one sample), in eval mode.

    Divided by the network's constant k, it says how much signal the network keeps: 1 when the
    gradient reaching the input is as large as the constant allows (orthogonal layers and
    norm-preserving activations), 1e-4 for a network that will barely train.

    Args:
        model: the network.
        example_input: a batch of inputs.

    Returns:
        ``||J^T g||`` (NaN when the output is not a tensor).

    Examples:
        >>> round(signal_ratio(torch.nn.Identity(), torch.randn(1, 3)), 6)
        1.0
    """
    was_training = model.training
    model.eval()
    try:
        x = example_input[:1].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            if not isinstance(out, Tensor):
                return math.nan
            g = torch.randn_like(out)
            g = g / g.norm().clamp_min(1e-30)
            (grad,) = torch.autograd.grad(out, x, g, allow_unused=True)
    finally:
        model.train(was_training)
    return 0.0 if grad is None else float(grad.norm())



_GATES = ("SqueezeExcitation", "SqueezeExcite", "SEModule", "SELayer", "SEBlock")


def explain_blockers(gm: fx.GraphModule, report) -> None:
    """Give the blockers that lie inside a squeeze-excitation module a reason and a replacement.

    The gate ``x * sigmoid(fc(pool(x)))`` multiplies the input by a function of itself: a product
    of two input-dependent factors, with no global Lipschitz bound (a genuine blocker). The module
    is found from the node's ``nn_module_stack`` (recorded by torch.fx while tracing).

    Args:
        gm: the traced model.
        report: the :class:`~liptriton.convert.ConversionReport` whose blockers are rewritten.
    """
    nodes = {n.name: n for n in gm.graph.nodes}
    for i, (where, reason) in enumerate(report.blockers):
        node = nodes.get(where)
        stack = node.meta.get("nn_module_stack", {}) if node is not None else {}
        gate = next((path for path, kind in stack.values()
                     if any(g in getattr(kind, "__name__", str(kind)) for g in _GATES)), None)
        if gate is not None:
            report.blockers[i] = (where, f"squeeze-excitation gate {gate!r} (x * sigmoid(fc(pool(x)))) multiplies "
                                         "its input by a function of itself: no global Lipschitz bound. Replace "
                                         f"the submodule {gate!r} by torch.nn.Identity() (or a fixed channel "
                                         f"scaling) before lipschitzify (was: {reason})")
