"""The user's own architecture, remembered by lipschitzify so that save can write weights for it.

:func:`record_origin` keeps a *skeleton* of the model lipschitzify was given: a deep copy whose
parameters and persistent buffers live on the ``meta`` device (no memory), with any
parametrization removed and liptriton layers replaced by their plain torch layers. It travels
in the converted ``GraphModule.meta`` (which survives ``copy.deepcopy``). :func:`instantiate`
turns it back into a real model holding given weights: the plain model a user would build.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["FOLDED", "INSERTED", "ORIGIN", "Origin", "instantiate", "record_origin"]

INSERTED = "liptriton_inserted"  # fx node meta key: a node lipschitzify inserted (the value says what)
ORIGIN = "liptriton_origin"  # GraphModule.meta key: the Origin of a converted model
FOLDED = "liptriton_folded"  # GraphModule.meta key: {layer: the BatchNorm folded into it}


@dataclass
class Origin:
    """The architecture a converted model came from.

    Attributes:
        architecture: the qualified class name of the user's model.
        skeleton: the model on the ``meta`` device, plain (None when it could not be made).
        problem: why there is no skeleton.
    """

    architecture: str
    skeleton: nn.Module | None
    problem: str = ""


def _qualname(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def _meta_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` with parameters and persistent buffers on ``meta`` (never copied)."""
    memo: dict[int, object] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None and id(p) not in memo:
                memo[id(p)] = nn.Parameter(p.detach().to("meta"), requires_grad=p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None and name not in m._non_persistent_buffers_set and id(b) not in memo:
                memo[id(b)] = b.detach().to("meta")
    return copy.deepcopy(model, memo)


def record_origin(model: nn.Module) -> Origin:
    """A plain, memory-free skeleton of ``model`` (see the module docstring).

    Args:
        model: the model given to lipschitzify, before any change.

    Returns:
        An :class:`Origin`; its ``skeleton`` is None (and ``problem`` says why) when the model
        cannot be copied.

    Examples:
        >>> import torch
        >>> record_origin(torch.nn.Linear(2, 3)).skeleton.weight.device.type
        'meta'
    """
    from liptriton._bake import bake_in_place, drop_stale_hooks, plainify

    try:
        skeleton = _meta_copy(model)
        drop_stale_hooks(skeleton)
        for m in list(skeleton.modules()):
            if parametrize.is_parametrized(m):
                bake_in_place(m, compute=False)
        skeleton = plainify(skeleton)
    except Exception as err:  # noqa: BLE001 (user modules may refuse deepcopy: no skeleton, said why)
        return Origin(_qualname(model), None, f"the model could not be copied ({type(err).__name__}: {err})")
    return Origin(_qualname(model), skeleton.eval())


def instantiate(origin: Origin, state: dict[str, Tensor]) -> nn.Module:
    """The user's plain architecture holding ``state`` (loaded strictly), in eval mode.

    Args:
        origin: a recorded origin with a skeleton.
        state: a full state dict of the plain architecture.

    Returns:
        A new model; ``state``'s tensors become its parameters and buffers.

    Examples:
        >>> import torch
        >>> o = record_origin(torch.nn.Linear(2, 3))
        >>> instantiate(o, {"weight": torch.ones(3, 2), "bias": torch.zeros(3)})(torch.ones(1, 2))
        tensor([[2., 2., 2.]])
    """
    model = copy.deepcopy(origin.skeleton)
    model.load_state_dict(state, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
