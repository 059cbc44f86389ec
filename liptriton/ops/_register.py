"""The one registration of a Triton-backed op: its forward, backward, reference and reference backward.

:func:`register_triton_op` defines ``liptriton::<name>`` (and ``liptriton::<name>_backward``) as
``torch.library.triton_op`` s, so torch.compile traces into their kernels, with the schema of the
torch reference; each body runs the kernel launcher when the kernel can take the inputs, the
reference otherwise (which keeps ``torch.library.opcheck`` usable on CPU). The autograd is
always the same: the forward saves its tensor inputs, the backward op returns the gradient of
the first input (``register_autograd``); an optional double backward differentiates the backward
op with respect to its incoming gradient.

Conventions: ``reference(*args)`` and ``forward(*args)`` take the op's arguments (the first is the
differentiable tensor); ``reference_backward(grad, *args)`` and ``backward(grad, *args)`` return
the gradient with respect to ``args[0]``; ``double_backward(grad_dx, *args)`` returns the
gradient of ``backward`` with respect to ``grad``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable

import torch
from torch import Tensor

from liptriton.ops._dispatch import kernel_runnable

__all__ = ["register_triton_op"]


def _signature(reference: Callable[..., object], backward: bool) -> inspect.Signature:
    """The reference's signature with resolved annotations (the op's schema); for the backward,
    ``grad: Tensor`` first and a Tensor result."""
    hints = typing.get_type_hints(reference)
    params = [p.replace(annotation=hints[p.name]) for p in inspect.signature(reference).parameters.values()]
    if not backward:
        return inspect.Signature(params, return_annotation=hints["return"])
    grad = inspect.Parameter("grad", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Tensor)
    return inspect.Signature([grad, *params], return_annotation=Tensor)


def _positional(signature: inspect.Signature, args: tuple, kwargs: dict) -> tuple:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    return tuple(bound.arguments.values())


def register_triton_op(name: str, *, reference: Callable[..., object], forward: Callable[..., object],
                       reference_backward: Callable[..., Tensor] | None = None,
                       backward: Callable[..., Tensor] | None = None,
                       takes_kernel: Callable[..., bool] | None = None,
                       double_backward: Callable[..., Tensor] | None = None) -> object:
    """Register ``liptriton::<name>`` (and its backward) with the shared dispatch and autograd.

    Args:
        name: the op's name in the ``liptriton`` namespace.
        reference: the torch definition, annotated (its signature is the op's schema).
        forward: the kernel launcher, same arguments.
        reference_backward: ``(grad, *args) -> grad of args[0]`` in torch (None: not differentiable).
        backward: the kernel launcher of the backward, same arguments.
        takes_kernel: ``(*args) -> bool``, whether the kernel takes these inputs (default: it can
            run on ``args[0]``'s device, see :func:`~liptriton.ops._dispatch.kernel_runnable`).
        double_backward: ``(grad_dx, *args) -> grad of grad`` (None: no double backward).

    Returns:
        The op, ``torch.ops.liptriton.<name>``.

    Examples:
        >>> def _scale_reference(x: torch.Tensor, c: float) -> torch.Tensor:
        ...     return x * c
        >>> op = register_triton_op("doc_scale", reference=_scale_reference, forward=_scale_reference,
        ...                         reference_backward=lambda g, x, c: g * c)
        >>> op(torch.ones(2), 3.0)
        tensor([3., 3.])
    """
    takes = takes_kernel or (lambda *args: kernel_runnable(args[0]))
    signature, backward_signature = _signature(reference, backward=False), _signature(reference, backward=True)

    def forward_body(*args, **kwargs):
        args = _positional(signature, args, kwargs)  # the dispatcher passes defaulted arguments by name
        return forward(*args) if takes(*args) else reference(*args)

    forward_body.__signature__ = signature
    torch.library.triton_op(f"liptriton::{name}", forward_body, mutates_args=())
    op = getattr(torch.ops.liptriton, name)
    if reference_backward is None:
        return op
    kernel_backward = backward or reference_backward

    def backward_body(*args, **kwargs):
        grad, *args = _positional(backward_signature, args, kwargs)
        return kernel_backward(grad, *args) if takes(*args) else reference_backward(grad, *args)

    backward_body.__signature__ = backward_signature
    torch.library.triton_op(f"liptriton::{name}_backward", backward_body, mutates_args=())
    backward_op = getattr(torch.ops.liptriton, f"{name}_backward")

    def setup_context(ctx, inputs, output) -> None:
        ctx.tensor_index = [i for i, a in enumerate(inputs) if isinstance(a, Tensor)]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_index))
        ctx.inputs = [None if isinstance(a, Tensor) else a for a in inputs]

    def restored(ctx) -> list:
        args = list(ctx.inputs)
        for i, t in zip(ctx.tensor_index, ctx.saved_tensors):
            args[i] = t
        return args

    def autograd_backward(ctx, grad: Tensor):
        args = restored(ctx)
        return (backward_op(grad, *args), *([None] * (len(args) - 1)))

    torch.library.register_autograd(f"liptriton::{name}", autograd_backward, setup_context=setup_context)
    if double_backward is not None:
        def setup_double(ctx, inputs, output) -> None:
            setup_context(ctx, inputs[1:], output)  # the incoming gradient is not needed

        def autograd_double(ctx, grad_dx: Tensor):
            args = restored(ctx)
            return (double_backward(grad_dx, *args), *([None] * len(args)))

        torch.library.register_autograd(f"liptriton::{name}_backward", autograd_double, setup_context=setup_double)
    return op
