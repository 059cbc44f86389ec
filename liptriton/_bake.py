"""Baking: parametrized tensors become plain ones, through one path.

:func:`baked_tensors` reads what the parametrizations compute in eval mode (each converged
once, by its own ``converge()``); :func:`bake_in_place` puts those tensors in place of the
parametrizations. certify, export (bake, save), ``vanilla_model`` / ``plain_torch_layer`` and
:mod:`liptriton.utils` (``remove_*``) all bake through them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from liptriton.parametrizations._base import ConvNormState, LipschitzParametrization

__all__ = ["bake_in_place", "baked_tensors", "drop_stale_hooks", "keep_eval_caches", "observe", "plainify"]


def drop_stale_hooks(model: nn.Module) -> None:
    """Remove the forward hooks of a deepcopy that still act on modules of the original model (a
    closure or a bound method is copied by reference: the conv states' input-size hooks are such)."""
    mine = {id(m) for m in model.modules()}

    def stale(hook) -> bool:
        owners = [getattr(hook, "__self__", None)]
        for cell in getattr(hook, "__closure__", None) or ():
            try:
                owners.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
        return any(isinstance(o, nn.Module) and id(o) not in mine for o in owners)

    for m in model.modules():
        for hooks in (m._forward_pre_hooks, m._forward_hooks):
            for hid, hook in list(hooks.items()):
                if stale(hook):
                    del hooks[hid]
                    m._forward_pre_hooks_with_kwargs.pop(hid, None)
                    m._forward_hooks_with_kwargs.pop(hid, None)


def keep_eval_caches(model: nn.Module, dup: nn.Module) -> int:
    """Let a deep copy ``dup`` of ``model`` reuse the eval weights ``model``'s parametrizations have
    cached and that are up to date (eval mode, parameter unchanged since): baking the copy then
    reads them instead of recomputing every constraint (a convolution's certificate included).

    Args:
        model: the model.
        dup: ``copy.deepcopy(model)`` (same structure, same values).

    Returns:
        How many cached weights the copy took over.

    Examples:
        >>> import copy, torch, liptriton
        >>> lin = liptriton.bjorck(torch.nn.Linear(3, 3)).eval()
        >>> _ = lin(torch.randn(1, 3))
        >>> keep_eval_caches(lin, copy.deepcopy(lin))
        1
    """
    kept = 0
    for m0, m1 in zip(model.modules(), dup.modules()):
        if not (parametrize.is_parametrized(m0) and parametrize.is_parametrized(m1)):
            continue
        for name, plist0 in m0.parametrizations.items():
            plist1 = getattr(m1.parametrizations, name, None)
            if plist1 is None or len(plist0) != 1 or len(plist1) != 1 or not plist0.is_tensor:
                continue  # a chain: its later members receive computed tensors
            p0, p1 = plist0[0], plist1[0]
            if isinstance(p0, LipschitzParametrization) and isinstance(p1, LipschitzParametrization):
                kept += p1.keep_cache_of(p0, plist1.original, plist0.original)
    return kept


def observe(model: nn.Module, example_input: Tensor | tuple) -> None:
    """One eval forward of ``example_input`` that tells every conv state its input size."""
    handles = []
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for plist in m.parametrizations.values():
                for p in plist:
                    if isinstance(getattr(p, "conv", None), ConvNormState):
                        handles.append(m.register_forward_pre_hook(
                            lambda mod, args, c=p.conv: c.observe(args[0]) if args else None))
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()


def baked_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The tensors ``module``'s parametrizations compute in eval mode, detached: the one place a
    constrained weight becomes a plain one.

    Switching a training module to eval converges each parametrization once
    (:meth:`~liptriton.parametrizations.LipschitzParametrization.converge`); the module is put
    back in its mode.

    Args:
        module: a parametrized module.

    Returns:
        ``{tensor name: value}`` for every parametrized tensor.

    Examples:
        >>> import torch, liptriton
        >>> sorted(baked_tensors(liptriton.spectral(torch.nn.Linear(3, 2))))
        ['weight']
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return {name: getattr(module, name).detach().clone() for name in module.parametrizations}
    finally:
        module.train(was_training)


def bake_in_place(module: nn.Module, names: tuple[str, ...] | None = None, *, compute: bool = True) -> nn.Module:
    """Replace the parametrizations of ``module`` (all, or ``names``) by the tensors they compute.

    Each tensor's original parameter object keeps its identity (optimizers holding it still
    work) and receives the baked value. When no parametrization is left, the module gets back
    its class before parametrization (``parametrize.type_before_parametrizations``) instead of
    deleting properties from the parametrized class, which a deep copy shares with the original
    model.

    Args:
        module: a parametrized module.
        names: the tensors to bake (None: all).
        compute: False keeps the unconstrained originals instead (a structure-only copy, e.g. of
            meta tensors).

    Returns:
        ``module``.

    Examples:
        >>> import torch, liptriton
        >>> lin = bake_in_place(liptriton.bjorck(torch.nn.Linear(3, 3)))
        >>> type(lin).__name__, parametrize.is_parametrized(lin)
        ('Linear', False)
    """
    names = tuple(module.parametrizations) if names is None else names
    plists = module.parametrizations
    if compute:
        values = {name: value for name, value in baked_tensors(module).items() if name in names}
    else:
        values = {name: plists[name].original for name in names if plists[name].is_tensor}
    originals = {name: plists[name].original if plists[name].is_tensor else None for name in names}
    if set(names) == set(plists):
        module.__class__ = parametrize.type_before_parametrizations(module)
        del module._modules["parametrizations"]
    else:
        for name in names:
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    with torch.no_grad():
        for name, value in values.items():
            original = originals[name]
            if original is not None and original.shape == value.shape and original.dtype == value.dtype:
                original.copy_(value)
                value = original
            if hasattr(module, name):
                delattr(module, name)
            if isinstance(original, nn.Parameter):
                module.register_parameter(name, value if isinstance(value, nn.Parameter) else nn.Parameter(value))
            else:
                module.register_buffer(name, value)
    return module


def plainify(module: nn.Module) -> nn.Module:
    """Replace modules by their plain form (:func:`liptriton.rules.plain_form`), recursively."""
    from liptriton.rules import plain_form

    new = plain_form(module)
    if isinstance(new, nn.Module) and new is not module:
        return plainify(new)
    for name, child in list(module.named_children()):
        if name == "parametrizations" and parametrize.is_parametrized(module):
            continue
        new = plainify(child)
        if new is not child:
            setattr(module, name, new)
    return module
