"""Fused hinge / KR / HKR loss over logits: the public op, its torch reference and its dispatch.

One op covers the binary and multiclass hinge, KR and HKR losses of
:mod:`liptriton.functional` (which choose ``alpha``, ``pos_weight`` and the KR weights). On CUDA
one Triton kernel reads the logits once and writes the per-sample loss and its gradient; the
backward multiplies that gradient by ``grad_output``. Elsewhere the torch reference runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton.ops._dispatch import HAS_TRITON, float32_compute, use_triton
from liptriton.ops._register import register_triton_op

__all__ = ["multiclass_hkr", "multiclass_hkr_reference"]


def _check(input: Tensor, target: Tensor, kr_pos: Tensor, kr_neg: Tensor, alpha: float) -> None:
    if not input.is_floating_point():
        raise TypeError(f"multiclass_hkr: input must be floating point, got dtype {input.dtype}")
    if input.dim() != 2 or target.shape != input.shape:
        raise ValueError(f"multiclass_hkr: expected input and target of the same shape (N, C), "
                         f"got {tuple(input.shape)} and {tuple(target.shape)}")
    c = input.shape[1]
    if kr_pos.shape != (c,) or kr_neg.shape != (c,):
        raise ValueError(f"multiclass_hkr: kr_pos and kr_neg must have shape ({c},), "
                         f"got {tuple(kr_pos.shape)} and {tuple(kr_neg.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"multiclass_hkr: alpha must be in [0, 1], got {alpha}")


def _kr_weight(x: Tensor, target: Tensor, kr_pos: Tensor, kr_neg: Tensor, kr_from_target: bool) -> Tensor:
    if kr_from_target:
        return target.to(x.dtype)
    return torch.where(target > 0, kr_pos.to(x.dtype), kr_neg.to(x.dtype))


def multiclass_hkr_reference(input: Tensor, target: Tensor, kr_pos: Tensor, kr_neg: Tensor, alpha: float,
                             min_margin: float = 1.0, pos_weight: float = 1.0,
                             kr_from_target: bool = False) -> Tensor:
    r"""Pure-torch per-sample hinge-KR loss (differentiable through autograd).

    .. math::
        \ell_i = \frac{1}{C} \sum_c \alpha\, w^h_{ic} \max(0, m/2 - s_{ic} x_{ic})
                 - (1 - \alpha)\, w^{kr}_{ic} x_{ic}

    with :math:`s_{ic} = \pm 1` the sign of ``target > 0``, :math:`w^h_{ic}` = ``pos_weight``
    on positive labels and 1 elsewhere, :math:`w^{kr}_{ic}` = ``kr_pos[c]`` or ``kr_neg[c]`` by
    the label (or ``target`` itself when ``kr_from_target``).

    Args:
        input: logits (N, C).
        target: labels (N, C); positive where > 0.
        kr_pos: KR weight of positive labels per class (C,).
        kr_neg: KR weight of negative labels per class (C,).
        alpha: hinge weight in [0, 1]; 1 is hinge only, 0 is KR only.
        min_margin: margin m.
        pos_weight: hinge weight of positive labels (C - 1 for the multiclass hinge).
        kr_from_target: take the KR weight from ``target`` (labels preprocessed for multi-GPU).

    Returns:
        The per-sample loss (N,), in the dtype of ``input``.

    Examples:
        >>> x = torch.tensor([[2.0, -1.0]]); t = torch.tensor([[1.0, 0.0]])
        >>> multiclass_hkr_reference(x, t, torch.ones(2), -torch.ones(2), alpha=0.0)
        tensor([-1.5000])
    """
    _check(input, target, kr_pos, kr_neg, alpha)
    x = float32_compute(input)
    pos = target > 0
    loss = x.new_zeros(x.shape)
    if alpha > 0.0:
        hinge = torch.relu(min_margin / 2.0 - torch.where(pos, x, -x))
        if pos_weight != 1.0:
            hinge = torch.where(pos, hinge * pos_weight, hinge)
        loss = alpha * hinge if alpha != 1.0 else hinge
    if alpha < 1.0:
        kr = _kr_weight(x, target, kr_pos, kr_neg, kr_from_target) * x
        loss = loss - (1.0 - alpha) * kr if alpha > 0.0 else -kr
    return loss.mean(dim=-1).to(input.dtype)


def _reference_with_grad(input: Tensor, target: Tensor, kr_pos: Tensor, kr_neg: Tensor, alpha: float,
                         min_margin: float, pos_weight: float, kr_from_target: bool,
                         need_grad: bool) -> tuple[Tensor, Tensor]:
    """The kernel's outputs computed in torch: (per-sample loss, d loss / d input)."""
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    x = input.to(dtype)
    loss = multiclass_hkr_reference(x, target, kr_pos, kr_neg, alpha, min_margin, pos_weight, kr_from_target)
    if not need_grad:
        return loss, x.new_empty((0, x.shape[1]))
    pos = target > 0
    sign = torch.where(pos, 1.0, -1.0).to(dtype)
    w_h = torch.where(pos, pos_weight, 1.0).to(dtype)
    active = (min_margin / 2.0 - sign * x) > 0
    grad = alpha * torch.where(active, -sign * w_h, 0.0)
    grad = grad - (1.0 - alpha) * _kr_weight(x, target, kr_pos, kr_neg, kr_from_target)
    return loss, grad / x.shape[1]


if HAS_TRITON:
    def _multiclass_hkr_forward(input: Tensor, target: Tensor, kr_pos: Tensor, kr_neg: Tensor, alpha: float,
                                min_margin: float, pos_weight: float, kr_from_target: bool,
                                need_grad: bool) -> tuple[Tensor, Tensor]:
        from liptriton.kernels.multiclass_hkr import multiclass_hkr_forward

        return multiclass_hkr_forward(input, target, kr_pos, kr_neg, alpha, min_margin, pos_weight,
                                      kr_from_target, need_grad)

    # The fused loss computes its gradient in the forward (one read of the logits): no backward
    # op, the autograd scales the saved gradient (the one op registered with its own autograd).
    register_triton_op("multiclass_hkr", reference=_reference_with_grad, forward=_multiclass_hkr_forward)

    def _setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output[1])
        ctx.input_dtype = inputs[0].dtype

    def _backward(ctx, grad_loss: Tensor, _grad_grad: Tensor | None):
        (grad,) = ctx.saved_tensors
        grad_input = (grad * grad_loss.to(grad.dtype).unsqueeze(-1)).to(ctx.input_dtype)
        return grad_input, None, None, None, None, None, None, None, None

    torch.library.register_autograd("liptriton::multiclass_hkr", _backward, setup_context=_setup_context)


def multiclass_hkr(input: Tensor, target: Tensor, kr_pos: Tensor, kr_neg: Tensor, alpha: float,
                   min_margin: float = 1.0, pos_weight: float = 1.0, kr_from_target: bool = False) -> Tensor:
    """Per-sample hinge-KR loss of logits, fused (loss and gradient in one pass) on CUDA.

    The formula is that of :func:`multiclass_hkr_reference`, which runs off CUDA. On CUDA one
    Triton kernel computes the loss and stores its gradient; the backward is
    ``grad * grad_output[:, None]``. Labels and KR weights get no gradient.

    Args:
        input: logits (N, C).
        target: labels (N, C); positive where > 0.
        kr_pos: KR weight of positive labels per class (C,).
        kr_neg: KR weight of negative labels per class (C,).
        alpha: hinge weight in [0, 1].
        min_margin: margin m.
        pos_weight: hinge weight of positive labels.
        kr_from_target: take the KR weight from ``target``.

    Returns:
        The per-sample loss (N,), in the dtype of ``input``.

    Examples:
        >>> import liptriton.ops as ops
        >>> x = torch.tensor([[0.2, -1.0]], requires_grad=True); t = torch.tensor([[1.0, 0.0]])
        >>> ops.multiclass_hkr(x, t, torch.ones(2), -torch.ones(2), alpha=1.0).sum().backward()
        >>> x.grad
        tensor([[-0.5000,  0.0000]])
    """
    _check(input, target, kr_pos, kr_neg, alpha)
    if use_triton(input):
        need_grad = input.requires_grad and torch.is_grad_enabled()
        loss, _ = torch.ops.liptriton.multiclass_hkr(input, target, kr_pos, kr_neg, float(alpha),
                                                     float(min_margin), float(pos_weight),
                                                     bool(kr_from_target), bool(need_grad))
        return loss.to(input.dtype)
    return multiclass_hkr_reference(input, target, kr_pos, kr_neg, alpha, min_margin, pos_weight,
                                    kr_from_target)
