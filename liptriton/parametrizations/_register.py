"""Registering a Lipschitz parametrization on a module (with the hook that tells a convolution's
operator-norm state its input size), and :func:`initialize`."""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from liptriton.parametrizations._base import LipschitzParametrization, WeightLayout
from liptriton.parametrizations._certified import CertifiedMatrixNorm
from liptriton.parametrizations._state import ConvNormState, MatrixNormState

__all__ = ["initialize", "register"]


def register(module: nn.Module, name: str, parametrization: LipschitzParametrization,
             layout: WeightLayout) -> nn.Module:
    """Register ``parametrization`` on ``module.name``, converge its matrix power iteration now
    (so that torch.compile never traces the long first iteration), and, for convolutions, add
    the hook that tells the operator-norm state the input size."""
    from torch.nn.utils import parametrize

    plists = getattr(module, "parametrizations", None)
    if plists is not None and name in plists:
        taken = [type(p).__name__ for p in plists[name] if isinstance(p, LipschitzParametrization)]
        if taken:
            raise ValueError(
                f"{type(module).__name__}.{name} is already constrained by {', '.join(taken)}: a second liptriton "
                f"constraint would stack on it. Remove it first with torch.nn.utils.parametrize"
                f".remove_parametrizations(module, {name!r}) (leave_parametrized=True keeps the current weight), "
                "then register the new one")
    conv_state = getattr(parametrization, "conv", None)
    if isinstance(conv_state, ConvNormState):
        conv_state.deferred = True  # register_parametrization evaluates once; do not converge yet
    try:
        # unsafe: skip torch's check that evaluates the parametrization once (its shape and dtype
        # are those of the weight by construction); for a convolution that evaluation certified
        # the operator at a default input size, most of the conversion time of a ResNet
        parametrize.register_parametrization(module, name, parametrization, unsafe=True)
        plist = getattr(module.parametrizations, name)
        if len(plist) == 1:  # the first parametrization sees the original tensor itself
            parametrization._owner = [plist]
    finally:
        if isinstance(conv_state, ConvNormState):
            conv_state.deferred = False
    state = getattr(parametrization, "state", None)
    if isinstance(state, (MatrixNormState, CertifiedMatrixNorm)):
        original = getattr(module.parametrizations, name).original
        with torch.no_grad():
            state.norm(layout.to_batch(original.float()), update=True)
    observed = module.__dict__.setdefault("_liptriton_observed", set())
    if isinstance(conv_state, ConvNormState) and name not in observed:
        # A partial of a module-level function (no closure over this state): a deep copy of the
        # module then observes its own states, not the original's.
        module.register_forward_pre_hook(functools.partial(_observe_input, name))
        observed.add(name)
    return module


def _observe_input(name: str, module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: tell every conv operator-norm state of ``module.<name>`` the input size."""
    plist = getattr(getattr(module, "parametrizations", None), name, None)
    if plist is None or not args or not isinstance(args[0], Tensor):
        return  # parametrization removed since, or no tensor input
    for p in plist:
        conv = getattr(p, "conv", None)
        if isinstance(conv, ConvNormState):
            size = conv.input_size
            conv.observe(args[0])
            if conv.input_size != size and isinstance(p, LipschitzParametrization):
                p.invalidate()  # the eval weight was normalized at another input size


def initialize(model: nn.Module, *example_inputs: Tensor) -> nn.Module:
    """Run one forward (eval mode, no_grad) so every constrained layer learns its input size and
    converges its power iteration; call it before ``torch.compile``.

    Without it, the first forward of a convolution converges its operator-norm state
    (``n_iters_init`` block steps), and under torch.compile those steps are traced into the
    first graph (a long compile, then one recompile).

    Args:
        model: a model with liptriton parametrizations.
        example_inputs: inputs of the real size.

    Returns:
        ``model``, in the mode it had.

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.spectral(torch.nn.Conv2d(1, 4, 3)))
        >>> net = liptriton.parametrizations.initialize(net, torch.randn(1, 1, 8, 8))
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(*example_inputs)
    model.train(was_training)
    return model
