"""The registry of module rules: for each module type, everything liptriton knows about it.

One :class:`ModuleRule` per class, in ``RULES`` (filled by :mod:`liptriton.rules.torch_rules` and
:mod:`liptriton.rules.liptriton_rules`). A module's rules are looked up along its class's MRO, so a
subclass inherits its parent's rule unless it has its own; a field left ``None`` (or a rule
function that returns ``None``) defers to the next class of the MRO. Nothing matches class names.

* ``constant``: the Lipschitz constant (certify, and lipschitzify's planning);
* ``convert``: what lipschitzify does with the module (keep it, wrap it, replace it, report it);
* ``plain``: its baked plain form (export, ``vanilla_model``);
* ``leaf``: torch.fx keeps it as one call (its rule bounds it) instead of tracing inside;
* ``homogeneous``: positively homogeneous (``f(c x) = c f(x)``, c > 0): export pushes scalings
  through it into the neighbouring weights;
* ``constrained``: a weighted layer lipschitzify gives the chosen parametrization (and counts in
  the network's depth).

Adding a rule is one entry, in the table of the type's family (torch / torchvision types in
``torch_rules.py``, liptriton's own in ``liptriton_rules.py``, a new family in a new file merged
in ``liptriton/rules/__init__.py``)::

    nn.PixelShuffle: const(1.0, "a permutation", homogeneous=True),
    MyLayerScale: ModuleRule(constant=lambda m, shape, nominal: (float(m.gamma.abs().max()), "max |gamma|")),

A class of an optional package (torchvision, timm) is declared by its import path in
``OPTIONAL_TORCH_RULES`` (``torch_rules.py``) and bound to the class itself the first time a rule
is looked up after the user imported that package (liptriton never imports it).

``tests/test_rules.py`` checks that every type lipschitzify keeps has a constant.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["KEEP", "OPTIONAL_RULES", "RULES", "ModuleRule", "const", "convert_module", "find", "is_constrained",
           "is_homogeneous", "is_leaf", "module_constant", "plain_form"]

Shape = tuple[int, ...] | None
# constant(module, input shape or None, nominal) -> (constant, note), or None: ask the next class
Constant = Callable[[nn.Module, Shape, bool], "tuple[float, str] | None"]
# convert(module, where, report, ctx) -> replacement, KEEP (keep it, maybe modified), or None: next class
Convert = Callable[[nn.Module, str, Any, dict], "nn.Module | object | None"]

KEEP = object()  # a convert rule's answer: keep the module (possibly modified in place)


@dataclass(frozen=True)
class ModuleRule:
    """What liptriton knows about one module type (see the module docstring).

    ``leaf``, ``homogeneous`` and ``constrained`` left None defer to the next class of the MRO
    (False when no class sets them).

    Attributes:
        constant: ``(module, in_shape, nominal) -> (constant, note)`` or None to defer. ``nominal``
            is True for lipschitzify's planning (trust parametrizations' own bounds), False for
            certify (measure the weights; the model is baked, eval mode, float64).
        convert: ``(module, where, report, ctx) -> replacement | KEEP | None``; None: defer.
        plain: ``module -> plain module | None`` (None: the module has no other plain form).
        leaf: torch.fx treats the module as one call (a bool, or a predicate of the module).
        homogeneous: ``f(c x) = c f(x)`` for every c > 0.
        constrained: a weighted layer that lipschitzify parametrizes.

    Examples:
        >>> rule = ModuleRule(constant=lambda m, shape, nominal: (1.0, "a permutation"))
        >>> rule.constant(None, None, False)
        (1.0, 'a permutation')
    """

    constant: Constant | None = None
    convert: Convert | None = None
    plain: Callable[[nn.Module], nn.Module | None] | None = None
    leaf: bool | Callable[[nn.Module], bool] | None = None
    homogeneous: bool | None = None
    constrained: bool | None = None


def const(c: float, note: str = "constant", **fields: Any) -> ModuleRule:
    """A rule with a fixed constant ``c`` (other :class:`ModuleRule` fields as keywords).

    Examples:
        >>> const(1.0, "1-Lipschitz").constant(None, None, True)
        (1.0, '1-Lipschitz')
    """
    return ModuleRule(constant=lambda m, shape, nominal: (c, note), **fields)


RULES: dict[type, ModuleRule] = {}
# Rules for classes of optional packages (torchvision, timm), by import path "package.module.Class":
# bound to the class itself in RULES once that package is imported by the user (never imported here).
OPTIONAL_RULES: dict[str, ModuleRule] = {}


def _bind_optional() -> None:
    for path in [p for p in OPTIONAL_RULES if p.split(".", 1)[0] in sys.modules]:
        module_name, _, cls_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except (ImportError, AttributeError):  # another version of the package: no such class
            OPTIONAL_RULES.pop(path)
            continue
        RULES.setdefault(cls, OPTIONAL_RULES.pop(path))


def _rules(module: nn.Module) -> Iterator[ModuleRule]:
    if OPTIONAL_RULES:
        _bind_optional()
    for cls in type(module).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            yield rule


def find(module: nn.Module) -> ModuleRule | None:
    """The rule of the most specific registered class of ``module`` (None: no rule).

    Examples:
        >>> import torch
        >>> find(torch.nn.ReLU()) is RULES[torch.nn.ReLU]
        True
    """
    return next(_rules(module), None)


def _has_own_bound(module: nn.Module) -> bool:
    return callable(getattr(module, "lipschitz_bound", None))


def module_constant(module: nn.Module, in_shape: Shape, nominal: bool) -> tuple[float, str]:
    """Lipschitz constant of a leaf module at input shape ``in_shape`` (None: unknown).

    Args:
        module: the module (in eval mode for certify).
        in_shape: the input's shape (batch first) or None.
        nominal: trust parametrizations' own ``lipschitz_bound()`` (lipschitzify's planning)
            instead of measuring the weight (certify).

    Returns:
        (constant, note); ``inf`` with the reason when no rule bounds it.

    Examples:
        >>> import torch
        >>> module_constant(torch.nn.GELU(), None, False)
        (1.129, "max |f'|")
    """
    plist = getattr(getattr(module, "parametrizations", None), "weight", None)
    if nominal and plist is not None:
        bounds = [p.lipschitz_bound() for p in plist if callable(getattr(p, "lipschitz_bound", None))]
        if bounds:
            return math.prod(bounds), "parametrization bound"
    for rule in _rules(module):
        if rule.constant is not None and (out := rule.constant(module, in_shape, nominal)) is not None:
            return out
    if _has_own_bound(module):
        return float(module.lipschitz_bound()), "module's lipschitz_bound()"
    return math.inf, f"no Lipschitz rule for {type(module).__name__}"


def convert_module(module: nn.Module, where: str, report, ctx: dict) -> nn.Module | None:
    """lipschitzify's step for one leaf module: its replacement, or None to keep it.

    Without a convert rule, a module is kept; one with no finite constant is reported.

    Args:
        module: the module.
        where: its path in the model (for the report).
        report: the :class:`~liptriton.convert.ConversionReport`.
        ctx: lipschitzify's options (``method``, ``layer_k``, ``pooling``, ...).

    Returns:
        The replacement module, or None (keep it).
    """
    for rule in _rules(module):
        if rule.convert is not None and (out := rule.convert(module, where, report, ctx)) is not None:
            return None if out is KEEP else out
    c, note = module_constant(module, None, True)
    if math.isinf(c) and note != "input size unknown":
        report.block(where, note)
    return None


def plain_form(module: nn.Module) -> nn.Module | None:
    """The baked plain form of ``module`` (constraints computed into plain weights), or None when
    it is plain already / has no other form.

    Examples:
        >>> import torch
        >>> plain_form(torch.nn.ReLU()) is None
        True
    """
    for rule in _rules(module):
        if rule.plain is not None:
            return rule.plain(module)
    return None


def _field(module: nn.Module, name: str):
    return next((v for rule in _rules(module) if (v := getattr(rule, name)) is not None), None)


def is_leaf(module: nn.Module) -> bool:
    """Whether torch.fx should keep ``module`` as one call (a rule bounds it as a whole).

    A module with its own ``lipschitz_bound()`` and no children but its parametrizations is a
    leaf too (a user layer that states its bound).

    Examples:
        >>> import liptriton
        >>> is_leaf(liptriton.GroupSort2()), is_leaf(liptriton.Sequential(liptriton.GroupSort2()))
        (True, False)
    """
    leaf = _field(module, "leaf")
    if leaf is not None:
        return bool(leaf(module) if callable(leaf) else leaf)
    return _has_own_bound(module) and all(n == "parametrizations" for n, _ in module.named_children())


def is_homogeneous(module: nn.Module) -> bool:
    """Whether ``module`` is positively homogeneous (by its rules).

    Examples:
        >>> import torch
        >>> is_homogeneous(torch.nn.ReLU()), is_homogeneous(torch.nn.GELU())
        (True, False)
    """
    return bool(_field(module, "homogeneous"))


def is_constrained(module: nn.Module) -> bool:
    """Whether ``module`` is a weighted layer that lipschitzify parametrizes (by its rules).

    Examples:
        >>> import torch
        >>> is_constrained(torch.nn.Conv2d(1, 1, 3)), is_constrained(torch.nn.ReLU())
        (True, False)
    """
    return bool(_field(module, "constrained"))
