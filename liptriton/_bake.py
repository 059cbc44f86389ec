"""The pieces of baking: private copies of a parametrized model, converged states, plain layers.

Used by :mod:`liptriton.export` (bake, save) and :mod:`liptriton._origin` (the skeleton of the
user's architecture).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from liptriton.parametrizations._base import ConvNormState, LipschitzParametrization
from liptriton.parametrizations.bjorck import Bjorck

__all__ = ["converge", "drop_stale_hooks", "observe", "own_classes", "plainify"]


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


def own_classes(model: nn.Module) -> None:
    """Give every parametrized module of a deepcopy its own class: deepcopy shares the dynamically
    created ``Parametrized<Layer>`` class with the original, and removing a parametrization deletes
    its property from that class (it would break the original model)."""
    for m in model.modules():
        if parametrize.is_parametrized(m):
            cls = type(m)
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            m.__class__ = type(cls.__name__, cls.__bases__, body)


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


def converge(p: LipschitzParametrization, w: Tensor, steps: int | None) -> None:
    """Re-run the power iterations of ``p`` (``steps``, else its ``n_iters_init``) from its current
    state; Björck layers also take the extra steps that still make the weight more orthogonal."""
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w
    p.converge_states(w, steps)
    if isinstance(p, Bjorck):
        p.eval_extra = p.extra_steps(w)
        if p.eval_extra and isinstance(getattr(p, "conv", None), ConvNormState):
            p.converge_states(w, steps)  # the operator norm of the more orthogonal kernel
    p._cache = None


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
