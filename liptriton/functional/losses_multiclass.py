r"""Multiclass hinge, HKR, soft-HKR, LSE-HKR and categorical hinge losses as functions.

Same conventions as :mod:`liptriton.functional.losses`: per-sample loss by default, a
``reduction`` and a ``gather_distributed`` keyword, values of deel-torchlip 1.0.5, static
validation only. ``target`` is one-hot ({0, 1} or {-1, 1}: positive where > 0) of the shape of
``input`` (N, C), or integer class indices of shape (N,).

Bad values: in eager mode, a class index outside [0, C) or a NaN / inf label raises a
ValueError naming the loss (skipped under ``torch.compile``, where reading values would break
the graph). NaN / inf logits are not an error, as with torch's own losses, so that
``torch.amp.GradScaler`` sees them and skips the step: a NaN logit gives a NaN loss, an infinite
one an infinite or NaN loss (or the finite limit where the loss does not grow with it, e.g. a
hinge that it satisfies); the soft-HKR
running mean is left unchanged by such a batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from liptriton._compile import compiled_functional
from liptriton.functional._loss_utils import apply_reduction, check_alpha
from liptriton.functional.losses import _hkr_core, _prepare

__all__ = ["hinge_multiclass_loss", "hkr_multiclass_loss", "categorical_hinge_loss",
           "lse_hkr_multiclass_loss", "soft_hkr_multiclass_loss"]


def hinge_multiclass_loss(input: Tensor, target: Tensor, min_margin: float = 1.0, *, reduction: str = "none",
                          gather_distributed: bool = False) -> Tensor:
    r"""Multiclass hinge: the binary hinge on every logit, the true class weighted by C - 1.

    .. math::
        \ell_i = \frac{1}{C} \Big( (C - 1) \max(0, m/2 - f_{y_i}(x_i))
                 + \sum_{c \neq y_i} \max(0, m/2 + f_c(x_i)) \Big)

    Args:
        input: logits (N, C).
        target: one-hot labels (N, C) or class indices (N,).
        min_margin: margin m.
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.hinge_multiclass_loss(torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([0]))
        tensor([0.6333])
    """
    x, t, reduction = _prepare("hinge_multiclass_loss", input, target, reduction, gather_distributed, True)
    return _hkr_core(x, t, 1.0, float(min_margin), float(x.shape[1] - 1), False, False, reduction)


def hkr_multiclass_loss(input: Tensor, target: Tensor, alpha: float = 0.0, min_margin: float = 1.0,
                        multi_gpu: bool = False, *, reduction: str = "none",
                        gather_distributed: bool = False) -> Tensor:
    r"""Multiclass HKR: :math:`\alpha` multiclass hinge :math:`- (1 - \alpha)` KR (one-vs-rest per class).

    .. math::
        \ell_i = \alpha\, \mathrm{hinge}^{mc}_i - (1 - \alpha)\, \mathrm{KR}_i

    with :func:`hinge_multiclass_loss` and :func:`liptriton.functional.kr_loss`.

    Args:
        input: logits (N, C).
        target: one-hot labels (N, C), class indices (N,), or labels preprocessed by
            :func:`~liptriton.functional.process_labels_for_multi_gpu` when ``multi_gpu``.
        alpha: hinge weight in [0, 1]; ValueError outside.
        min_margin: margin m.
        multi_gpu: ``target`` holds the KR weights.
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> x = torch.randn(8, 10)
        >>> LF.hkr_multiclass_loss(x, torch.arange(8), alpha=0.9, reduction="mean").shape
        torch.Size([])
    """
    alpha = check_alpha("hkr_multiclass_loss", alpha)
    x, t, reduction = _prepare("hkr_multiclass_loss", input, target, reduction, gather_distributed, True)
    return _hkr_core(x, t, alpha, float(min_margin), float(x.shape[1] - 1), bool(multi_gpu), False, reduction)


@compiled_functional
def _categorical_hinge(x: Tensor, t: Tensor, min_margin: float, reduction: str) -> Tensor:
    pos_mask = t > 0
    pos = torch.where(pos_mask, x, 0.0).sum(dim=-1)
    neg = torch.where(pos_mask, x - min_margin, x).amax(dim=-1)
    return apply_reduction(torch.relu(min_margin - (pos - neg)), reduction)


def categorical_hinge_loss(input: Tensor, target: Tensor, min_margin: float = 1.0, *, reduction: str = "none",
                           gather_distributed: bool = False) -> Tensor:
    r"""Categorical hinge: the true logit must beat every other one by the margin.

    .. math::
        \ell_i = \max\big(0,\ m - f_{y_i}(x_i) + \max(f_{y_i}(x_i) - m,\ \max_{c \neq y_i} f_c(x_i))\big)

    Args:
        input: logits (N, C).
        target: one-hot labels (N, C) or class indices (N,).
        min_margin: margin m.
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.categorical_hinge_loss(torch.tensor([[2.0, 0.5, 0.0]]), torch.tensor([0]))
        tensor([0.])
    """
    x, t, reduction = _prepare("categorical_hinge_loss", input, target, reduction, gather_distributed, True)
    return _categorical_hinge(x, t, float(min_margin), reduction)


@compiled_functional
def _lse_hkr(x: Tensor, t: Tensor, alpha: float, temperature: float, penalty: float, min_margin: float,
             reduction: str) -> Tensor:
    x = x * temperature
    pos_mask = t > 0
    has_neg = (~pos_mask).any(dim=-1)
    pos = torch.where(pos_mask, x, 0.0).sum(dim=-1)
    n_classes = x.shape[1]
    if n_classes > 2:
        scale = math.log(n_classes - 1) / (min_margin * penalty / 2.0)
        neg = torch.where(pos_mask, -math.inf, scale * x)
        neg = torch.where(has_neg.unsqueeze(-1), neg, 0.0)  # keeps logsumexp (and its gradient) finite
        lse_neg = torch.logsumexp(neg, dim=-1) / scale
    else:  # one negative: (1/t) logsumexp(t x) = x for every t (deel-torchlip divides 0 by 0 here)
        lse_neg = torch.where(pos_mask, 0.0, x).sum(dim=-1)
    lse_neg = torch.where(has_neg, lse_neg, 0.0)
    kr = lse_neg - pos
    hinge = torch.relu(min_margin / 2.0 - pos) + torch.relu(min_margin / 2.0 + lse_neg)
    if alpha == 1.0:
        loss = hinge
    elif alpha == 0.0:
        loss = kr
    else:
        loss = (1.0 - alpha) * kr + alpha * hinge
    return apply_reduction(loss, reduction)


def lse_hkr_multiclass_loss(input: Tensor, target: Tensor, alpha: float = 1.0, temperature: float = 1.0,
                            penalty: float = 1.0, min_margin: float = 1.0, *, reduction: str = "none",
                            gather_distributed: bool = False) -> Tensor:
    r"""HKR on the true logit against a log-sum-exp summary of the other logits.

    With :math:`z = \tau x`, :math:`t = \log(C - 1) / (p\, m / 2)` and
    :math:`\mathrm{lse}_i = \frac{1}{t} \log \sum_{c \neq y_i} e^{t z_{ic}}` (between the max of
    the negatives and that max + p m / 2):

    .. math::
        \ell_i = (1 - \alpha)(\mathrm{lse}_i - z_{iy_i})
                 + \alpha \big(\max(0, m/2 - z_{iy_i}) + \max(0, m/2 + \mathrm{lse}_i)\big)

    Args:
        input: logits (N, C), C >= 2.
        target: one-hot labels (N, C) (one positive per row) or class indices (N,).
        alpha: hinge weight in [0, 1]; ValueError outside.
        temperature: factor :math:`\tau` applied to the logits.
        penalty: p, bound of the log-sum-exp excess over the max, in units of m / 2.
        min_margin: margin m.
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction. For C = 2, :math:`\mathrm{lse}_i` is the negative
        logit (the limit; deel-torchlip returns NaN); a row without negative label gets
        :math:`\mathrm{lse}_i = 0`; with several positives :math:`z_{iy_i}` is their sum.

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.lse_hkr_multiclass_loss(torch.randn(4, 10), torch.arange(4), alpha=0.9).shape
        torch.Size([4])
    """
    alpha = check_alpha("lse_hkr_multiclass_loss", alpha)
    x, t, reduction = _prepare("lse_hkr_multiclass_loss", input, target, reduction, gather_distributed, True)
    if x.shape[1] < 2:
        raise ValueError(f"lse_hkr_multiclass_loss: needs at least 2 classes, got input of shape "
                         f"{tuple(x.shape)}")
    return _lse_hkr(x, t, alpha, float(temperature), float(penalty), float(min_margin), reduction)


@compiled_functional
def _soft_hkr(x: Tensor, t: Tensor, running_mean: Tensor, alpha: float, min_margin: float, alpha_mean: float,
              temperature: float, reduction: str) -> tuple[Tensor, Tensor]:
    dtype = torch.promote_types(x.dtype, running_mean.dtype)  # float64 inputs: the statistic too
    batch_mean = x.detach().abs().mean().to(dtype)
    # a non-finite batch (NaN / inf logits) leaves the running statistic as it was: its loss is
    # non-finite, the state stays usable for the next (finite) batch
    batch_mean = torch.where(torch.isfinite(batch_mean), batch_mean, running_mean.to(dtype).reshape(()))
    new_mean = alpha_mean * running_mean.to(dtype) + (1.0 - alpha_mean) * batch_mean
    total_mean = new_mean.clamp(min_margin, 20000.0)
    temp = (temperature * min_margin / total_mean).clamp(0.005, 250.0).to(x.dtype)
    pos_mask = t > 0
    logits = torch.where(pos_mask, torch.finfo(x.dtype).min, temp * x)
    weight = torch.where(pos_mask, 1.0, torch.softmax(logits, dim=-1))
    signed = torch.where(pos_mask, x, -x)
    kr = (-signed * weight).sum(dim=-1)
    hinge = (torch.relu(min_margin / 2.0 - signed) * weight).sum(dim=-1)
    if alpha == 1.0:
        loss = hinge
    elif alpha == 0.0:
        loss = kr
    else:
        loss = (1.0 - alpha) * kr + alpha * hinge
    return apply_reduction(loss, reduction), new_mean.clamp(0.005, 1000.0).to(running_mean.dtype)


def soft_hkr_multiclass_loss(input: Tensor, target: Tensor, running_mean: Tensor, alpha: float = 0.9,
                             min_margin: float = 1.0, alpha_mean: float = 0.99, temperature: float = 1.0, *,
                             reduction: str = "none",
                             gather_distributed: bool = False) -> tuple[Tensor, Tensor]:
    r"""Soft multiclass HKR (Serrurier et al. 2024): other classes weighted by a softmax.

    The running mean of :math:`|f|` gives the softmax temperature
    :math:`T = \mathrm{clip}(\tau m / \mathrm{clip}(\bar{\mu}, m, 2\cdot10^4), 0.005, 250)`, with
    :math:`\bar{\mu} = a \mu + (1 - a) \mathrm{mean}|f|` (a = ``alpha_mean``). With
    :math:`w_{ic} = 1` on the true class and :math:`\mathrm{softmax}_{c \neq y_i}(T f_{ic})` elsewhere
    and :math:`s_{ic} = \pm f_{ic}` the signed logit:

    .. math::
        \ell_i = \sum_c w_{ic} \big( -(1 - \alpha)\, s_{ic} + \alpha \max(0, m/2 - s_{ic}) \big)

    Args:
        input: logits (N, C).
        target: one-hot labels (N, C) or class indices (N,).
        running_mean: the running mean :math:`\mu`, a tensor of shape (1,) (not modified).
        alpha: hinge weight in [0, 1]; ValueError outside.
        min_margin: margin m.
        alpha_mean: momentum a of the running mean.
        temperature: softmax temperature factor :math:`\tau`.
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute (and update the mean) over the global batch of all ranks, so
            the new running mean is the same on every rank.

    Returns:
        ``(loss, new_running_mean)``: per-sample loss (N,) or its reduction, and
        :math:`\mathrm{clip}(\bar{\mu}, 0.005, 1000)` to store (no gradient).

    Examples:
        >>> import liptriton.functional as LF
        >>> loss, mean = LF.soft_hkr_multiclass_loss(torch.randn(4, 3), torch.arange(3).repeat(2)[:4],
        ...                                          torch.ones(1))
        >>> loss.shape, mean.shape
        (torch.Size([4]), torch.Size([1]))
    """
    alpha = check_alpha("soft_hkr_multiclass_loss", alpha)
    if not isinstance(running_mean, Tensor) or running_mean.numel() != 1:
        raise ValueError("soft_hkr_multiclass_loss: running_mean must be a tensor with one element, got "
                         f"{getattr(running_mean, 'shape', type(running_mean).__name__)}")
    x, t, reduction = _prepare("soft_hkr_multiclass_loss", input, target, reduction, gather_distributed, True)
    return _soft_hkr(x, t, running_mean, alpha, float(min_margin), float(alpha_mean), float(temperature),
                     reduction)
