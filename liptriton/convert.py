"""lipschitzify(model): turn an existing architecture into a k-Lipschitz one, with a report.

The model is traced with torch.fx (liptriton and torch.nn modules as leaves), then:

1. BatchNorm folds into the Linear / Conv that feeds it (its eval statistics), or is removed;
2. residual sums ``f(x) + g(x)`` (``+``, ``+=``, ``torch.add``, ``-``) become learnable convex
   combinations (:class:`liptriton.LipResidual`), whose constant is the largest of the terms';
3. every Linear / ConvNd / ConvTransposeNd gets the chosen parametrization with ``k ** (1 / D)``,
   D being the largest number of such layers on a path from the input to the output;
4. modules whose constant exceeds 1 are scaled or replaced (see the options), and modules
   with no finite constant are reported;
5. the planned bound is propagated through the new graph with the same rules as
   :func:`liptriton.certify` (with each layer at its parametrization's bound and each convex
   combination at its worst weights); if it exceeds k, the output is multiplied by k / bound.

A model that torch.fx cannot trace is converted module by module, and the report says that
its functional operations (residual additions, ...) are not covered.
"""

from __future__ import annotations

import copy
import math
import operator
import warnings
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from liptriton._propagate import TRACE_ERRORS, LeafTracer, propagate
from liptriton._fold_batchnorm import fold_batchnorm
from liptriton._convert_plan import (explain_blockers, record_example_shapes, replace_relu_family, signal_ratio,
                                    unconstrained_weights)
from liptriton._origin import INSERTED, ORIGIN, record_origin
from liptriton._residuals import depends_on_input, depth, rewrite_residuals
from liptriton.bounds.activations import FUNCTION_CONSTANTS
from liptriton.parametrizations import METHODS
from liptriton.rules import convert_module, is_constrained

__all__ = ["ConversionReport", "lipschitzify"]

_CHOICES = {"batchnorm": ("fold", "remove", "error"), "pooling": ("scaled", "l2", "keep"),
            "activations": ("scale", "groupsort", "keep"), "maxpool": ("scale", "keep"),
            "dropout": ("keep", "remove"), "residual": ("convex", "keep")}


@dataclass
class ConversionReport:
    """What :func:`lipschitzify` did.

    Attributes:
        changes: ``(where, original, action)`` for every change.
        blockers: ``(where, reason)`` for every module or op that prevents a guarantee.
        layer_k: the constant given to each constrained layer.
        planned_bound: the bound of the converted model by the conversion's own rules.
        output_scale: the factor applied to the output (1 when none).
        unconstrained: ``(parameter, how it is used)`` for every trainable parameter that no
            liptriton parametrization constrains and whose value changes the constant.
        signal: gradient norm through the converted network at the example input, divided by k
            (1: every bit of the constant is used; near 0: a network that will barely train);
            NaN without ``example_input``.
    """

    changes: list[tuple[str, str, str]] = field(default_factory=list)
    blockers: list[tuple[str, str]] = field(default_factory=list)
    layer_k: float = 1.0
    planned_bound: float = math.nan
    output_scale: float = 1.0
    unconstrained: list[tuple[str, str]] = field(default_factory=list)
    signal: float = math.nan

    def change(self, where: str, original: str, action: str) -> None:
        """Record a change."""
        self.changes.append((where, original, action))

    def block(self, where: str, reason: str) -> None:
        """Record something that prevents a guarantee."""
        self.blockers.append((where, reason))

    def __str__(self) -> str:
        title = (f"lipschitzify: layer k {self.layer_k:.6g}, planned bound {self.planned_bound:.6g}, "
                 f"output scale {self.output_scale:.6g}, signal kept {self.signal:.3g}")
        lines = [title, f"{'where':<32} {'was':<22} action", "-" * 80]
        lines += [f"{w[:32]:<32} {o[:22]:<22} {a}" for w, o, a in self.changes]
        if self.blockers:
            lines.append("not covered (no guarantee):")
            lines += [f"  {w}: {r}" for w, r in self.blockers]
        if self.unconstrained:
            lines.append("weights left unconstrained:")
            lines += [f"  {w}: {r}" for w, r in self.unconstrained]
        return "\n".join(lines)


def _check(k, method, strict, inplace, options) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ValueError(f"lipschitzify: k must be a finite number > 0, got {k!r}")
    if method not in METHODS:
        raise ValueError(f"lipschitzify: method must be one of {tuple(METHODS)}, got {method!r}")
    for name, value in options.items():
        if value not in _CHOICES[name]:
            raise ValueError(f"lipschitzify: {name} must be one of {_CHOICES[name]}, got {value!r}")
    for name, value in (("strict", strict), ("inplace", inplace)):
        if not isinstance(value, bool):
            raise TypeError(f"lipschitzify: {name} must be a bool, got {type(value).__name__}")


def _scale_output(gm: fx.GraphModule, factor: float) -> None:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    value = out.args[0]
    with gm.graph.inserting_before(out):
        scaled = gm.graph.call_function(operator.mul, (value, factor))
    scaled.meta[INSERTED] = "output scale"
    out.args = (scaled,)


def _convert_untraced(model: nn.Module, report: ConversionReport, ctx: dict) -> None:
    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            qual = f"{prefix}{name}"
            if LeafTracer().is_leaf_module(child, qual) or not list(child.children()):
                new = convert_module(child, qual, report, ctx)
                if new is not None:
                    setattr(parent, name, new)
            else:
                visit(child, qual + ".")

    visit(model, "")


def lipschitzify(model: nn.Module, *, k: float = 1.0, method: str = "bjorck", strict: bool = True,
                 inplace: bool = False, batchnorm: str = "fold", pooling: str = "scaled",
                 activations: str = "scale", maxpool: str = "scale", dropout: str = "keep",
                 residual: str = "convex", example_input: torch.Tensor | None = None,
                 **method_kwargs) -> nn.Module:
    """Make ``model`` k-Lipschitz (l2) and report every change.

    Args:
        model: the model (any nn.Linear / nn.ConvNd / nn.ConvTransposeNd architecture).
        k: the Lipschitz constant of the whole model (> 0).
        method: "bjorck", "spectral", "frobenius" (whole-matrix norm), "householder" or "aol"
            (any name of :data:`liptriton.parametrizations.METHODS`).
        strict: raise a ValueError listing what prevents a guarantee (else warn).
        inplace: constrain the model's own layers instead of a deep copy. The rewritten
            graph (residuals, output scale) lives in the returned module: always use it.
        batchnorm: "fold" into the preceding Linear/Conv (eval statistics; removed where no
            such layer precedes it), "remove", or "error" (report it).
        pooling: average pooling "scaled" (divided by its norm bound: non-overlapping windows
            become ``sqrt(window) * mean``, global pooling ``sqrt(H W) * mean``), "l2"
            (l2-norm pooling), or "keep" (overlapping constants are accounted for).
        activations: "scale": activations whose constant c exceeds 1 (GELU, SiLU, Hardswish,
            ...) are scaled by 1/c; "groupsort": every ReLU-family activation (ReLU, ReLU6,
            LeakyReLU, GELU, SiLU, Hardswish, ..., modules and functional calls) becomes GroupSort2
            on the channels, norm-preserving where ReLU halves the energy at every layer: the
            choice for a network to train (``report.signal`` measures it: 1.5e-2 against 5.7e-3
            with ReLU on torchvision's resnet18 at 32 x 32). GroupSort2 is the max / min of channel
            pairs (Anil et al.'s MaxMin) and keeps the channel count; liptriton's ``MaxMin``
            (deel-lip's, ``cat(relu(x), relu(-x))``) doubles it: not a drop-in replacement where
            the next conv, sum or pooling expects C channels. "keep": the output scale absorbs c.
        maxpool: overlapping max pooling (constant sqrt(windows per element)): "scale" or "keep".
        dropout: "keep" (identity in eval; the training forward scales by 1/(1-p)) or "remove".
        residual: "convex" (LipResidual: ``a x + (1 - a) f(x)``, learnable; the term with fewer
            constrained layers, the skip connection, starts at ``a = 0.9``: at 0.5 a deep residual
            network's identity path is halved at every block) or "keep" (sums add their bounds; the
            output scale restores k).
        example_input: optional batch of inputs at the real size: the plan uses the shapes of
            one forward (functional pooling, flatten, interpolation, ...: the rules of
            :func:`liptriton.certify`), then :func:`liptriton.parametrizations.initialize` runs
            and ``report.signal`` is measured.
        **method_kwargs: passed to the parametrization function (e.g. ``n_iters``).

    Returns:
        The converted model (a ``torch.fx.GraphModule`` when traced) with ``lipschitz_report``
        (a :class:`ConversionReport`, printable). A traced one keeps a weightless copy of
        ``model``'s architecture in its ``meta``, so that :func:`liptriton.save` writes the
        constrained weights for ``model``'s own architecture.

    Raises:
        ValueError: bad options, or (strict) modules that prevent a guarantee, listed by name.

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
        >>> lip = liptriton.lipschitzify(net)
        >>> liptriton.certify(lip, torch.randn(3, 4)).upper <= 1.001
        True
    """
    options = {"batchnorm": batchnorm, "pooling": pooling, "activations": activations, "maxpool": maxpool,
               "dropout": dropout, "residual": residual}
    _check(k, method, strict, inplace, options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"lipschitzify: model must be an nn.Module, got {type(model).__name__}")
    if method == "frobenius":
        method_kwargs.setdefault("disjoint_neurons", False)
    origin = record_origin(model)
    target = model if inplace else copy.deepcopy(model)
    report = ConversionReport()
    ctx = {**options, "method": METHODS[method], "method_kwargs": method_kwargs, "layer_k": float(k)}
    try:
        gm = fx.GraphModule(target, LeafTracer().trace(target))
    except TRACE_ERRORS as err:  # tracing runs user code: a failure means module-by-module conversion
        report.block("<model>", f"torch.fx could not trace the model ({type(err).__name__}: {err}); converted "
                                "module by module: functional operations in forward (residual additions, "
                                "...) are not covered")
        layers = [m for m in target.modules() if is_constrained(m)]
        ctx["layer_k"] = float(k) ** (1.0 / max(len(layers), 1))
        report.layer_k = ctx["layer_k"]
        _convert_untraced(target, report, ctx)
        result = target
    else:
        fold_batchnorm(gm, report, batchnorm)
        if residual == "convex":
            rewrite_residuals(gm, report)
        if example_input is not None:  # the real shapes: shape-dependent rules are those of certify
            record_example_shapes(gm, example_input)
        if activations == "groupsort":
            replace_relu_family(gm, report, depends_on_input(gm))
        ctx["layer_k"] = report.layer_k = float(k) ** (1.0 / depth(gm))
        depends = depends_on_input(gm)
        for node in list(gm.graph.nodes):
            if node.op == "call_module" and node.target not in ctx.setdefault("done", set()):
                ctx["done"].add(node.target)
                new = convert_module(gm.get_submodule(node.target), node.target, report, ctx)
                if new is not None:
                    parent, _, leaf = node.target.rpartition(".")
                    setattr(gm.get_submodule(parent) if parent else gm, leaf, new)
            elif node.op in ("call_function", "call_method") and node.name in depends:
                _check_function(gm, node, report, activations, depends)
        gm.graph.lint()
        gm.recompile()
        rows, bound = propagate(gm, nominal=True)
        report.planned_bound = bound
        targets = {n.name: n.target for n in gm.graph.nodes if n.op == "call_module"}
        for row in rows:
            known = {w for w, _ in report.blockers}
            if math.isinf(row.local) and row.name not in known and targets.get(row.name) not in known:
                report.block(row.name, f"{row.op}: {row.note}")
        explain_blockers(gm, report)
        if math.isinf(bound) and report.blockers:  # scale what is covered (blockers counted as 1)
            _, bound = propagate(gm, nominal=True, unbounded_as_one=True)
        if math.isfinite(bound) and bound > k * (1 + 1e-9):
            report.output_scale = k / bound
            _scale_output(gm, report.output_scale)
            gm.recompile()
            report.change("output", "", f"multiplied by {k / bound:.6g} (planned bound {bound:.6g} > k)")
        gm.train(model.training)
        gm.meta[ORIGIN] = origin  # what liptriton.save writes the weights for (survives deepcopy)
        result = gm
    report.unconstrained = unconstrained_weights(result)
    if report.blockers:
        listing = "; ".join(f"{w}: {r}" for w, r in report.blockers)
        if report.unconstrained:
            listing += "; weights left unconstrained: " + ", ".join(w for w, _ in report.unconstrained)
        if strict:
            raise ValueError(f"lipschitzify: no Lipschitz guarantee for: {listing} (strict=False converts the "
                             "rest and warns)")
        warnings.warn(f"lipschitzify: no Lipschitz guarantee for: {listing}", stacklevel=2)
    result.lipschitz_report = report
    if example_input is not None:
        from liptriton.parametrizations import initialize

        initialize(result, example_input)
        report.signal = signal_ratio(result, example_input) / k
    return result


def _check_function(gm: fx.GraphModule, node: fx.Node, report: ConversionReport, activations: str,
                    depends: set[str]) -> None:
    """Report functions with no finite constant; scale functional activations above 1."""
    from liptriton._propagate import _function_rule

    if node.target in FUNCTION_CONSTANTS and activations == "scale":
        c = FUNCTION_CONSTANTS[node.target]
        with gm.graph.inserting_after(node):
            scaled = gm.graph.call_function(operator.mul, (node, 1.0 / c))
        scaled.meta[INSERTED] = "activation scale"
        node.replace_all_uses_with(scaled, delete_user_cb=lambda u: u is not scaled)
        report.change(node.name, getattr(node.target, "__name__", str(node.target)), f"scaled by 1/{c}")
        return
    local, _, note = _function_rule(node, lambda a: 1.0 if isinstance(a, fx.Node) and a.name in depends else 0.0,
                                    gm)
    if math.isinf(local):
        report.block(node.name, note)
