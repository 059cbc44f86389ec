r"""KR, hinge and HKR losses (binary and multi-label) as functions.

Values equal deel-torchlip 1.0.5's for the same arguments. Each function returns the
per-sample loss by default (``reduction="none"``, as deel-torchlip's functionals) and takes
``reduction`` and ``gather_distributed`` keywords. The arithmetic runs in one fused op
(:func:`liptriton.ops.multiclass_hkr`), compiled on first use where
:func:`liptriton.config.compile_functionals` says so; validation is static (shapes, dtypes,
Python numbers), so none of these functions breaks a user's ``torch.compile`` graph.

Labels: a label is positive where ``target > 0``, so {0, 1}, {-1, 1} and one-hot targets are
all accepted. KR weights come from the batch: with ``p_c`` the fraction of positive labels of
column c, positive samples weigh ``1 / p_c`` and negative ones ``-1 / (1 - p_c)``; a batch
with a single class gets weight 0 for the absent side (no NaN): the loss of such a batch is
the mean of the logits of the class present (negated for the negative class), deel-torchlip
1.0.5's value.

Bad values: in eager mode, a class index outside [0, C) or a NaN / inf label raises a
ValueError naming the loss (skipped under ``torch.compile``, where reading values would break
the graph). NaN / inf logits are not an error, as with torch's own losses, so that
``torch.amp.GradScaler`` sees them and skips the step: a NaN logit gives a NaN loss, an infinite
one an infinite or NaN loss (or the finite limit where the loss does not grow with it, e.g. a
hinge that it satisfies).
"""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton._compile import compiled_functional
from liptriton.functional._loss_utils import (
    apply_reduction,
    check_alpha,
    check_input,
    check_reduction,
    check_target,
    kr_weights,
    maybe_gather,
)
from liptriton.ops.multiclass_hkr import multiclass_hkr

__all__ = ["apply_reduction", "kr_loss", "kr_loss_multi_gpu", "kr_loss_standard", "neg_kr_loss",
           "hinge_margin_loss", "hkr_loss", "process_labels_for_multi_gpu"]


@compiled_functional
def _hkr_core(input: Tensor, target: Tensor, alpha: float, min_margin: float, pos_weight: float,
              multi_gpu: bool, negate: bool, reduction: str) -> Tensor:
    """Per-sample (then reduced) hinge-KR loss through the fused op."""
    dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    if multi_gpu or alpha == 1.0:  # KR weights unused
        kr_pos = kr_neg = torch.zeros(input.shape[1], dtype=dtype, device=input.device)
    else:
        kr_pos, kr_neg = kr_weights(target, dtype)
    loss = multiclass_hkr(input, target, kr_pos, kr_neg, alpha, min_margin, pos_weight, multi_gpu)
    loss = apply_reduction(loss, reduction)
    return -loss if negate else loss


def _prepare(fn: str, input: Tensor, target: Tensor, reduction: str, gather_distributed: bool,
             allow_indices: bool) -> tuple[Tensor, Tensor, str]:
    reduction = check_reduction(fn, reduction)
    x = check_input(fn, input)
    t = check_target(fn, x, target, allow_indices=allow_indices)
    x, t = maybe_gather(x, t, gather_distributed)
    return x, t, reduction


def kr_loss(input: Tensor, target: Tensor, multi_gpu: bool = False, *, reduction: str = "none",
            gather_distributed: bool = False) -> Tensor:
    r"""Kantorovich-Rubinstein (Wasserstein-1) estimate, per sample.

    .. math::
        \mathcal{W}(\mu, \nu) \approx \mathbb{E}_{x \sim \mu}[f(x)] - \mathbb{E}_{x \sim \nu}[f(x)],
        \qquad \ell_i = \frac{1}{C} \sum_c w_{ic} f_c(x_i)

    with :math:`w_{ic} = 1 / p_c` for positive labels and :math:`-1 / (1 - p_c)` for negative
    ones (:math:`p_c` the fraction of positives of column c in the batch), so that the mean of
    :math:`\ell` over the batch is the difference of the two class means. :math:`\mu` is the
    distribution of positive labels (``target > 0``), :math:`\nu` the rest.

    Args:
        input: logits f(x) of shape (N,), (N, 1) (binary) or (N, C) (multi-label / one-hot).
        target: labels of the same number of elements ({0, 1}, {-1, 1} or one-hot), integer
            class indices (N,) when C > 1, or labels preprocessed by
            :func:`process_labels_for_multi_gpu` when ``multi_gpu``.
        multi_gpu: ``target`` holds the KR weights (deel-torchlip's multi-GPU recipe).
        reduction: 'none' (per-sample, the default) | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks (all-gather with
            autograd); 'none' then returns the per-sample loss of the global batch.

    Returns:
        Per-sample loss (N,) or its reduction. A batch with one class only estimates the mean
        of that class (the other expectation counts as 0).

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.kr_loss(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0]), reduction="mean")
        tensor(3.)
    """
    x, t, reduction = _prepare("kr_loss", input, target, reduction, gather_distributed, True)
    return _hkr_core(x, t, 0.0, 1.0, 1.0, bool(multi_gpu), True, reduction)


def kr_loss_standard(input: Tensor, target: Tensor, *, reduction: str = "none",
                     gather_distributed: bool = False) -> Tensor:
    """:func:`kr_loss` with KR weights from the batch's labels (deel-torchlip's ``kr_loss_standard``).

    Args:
        input: logits (N,), (N, 1) or (N, C).
        target: labels ({0, 1}, {-1, 1}; positive where > 0).
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.kr_loss_standard(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0]))
        tensor([4., 2.])
    """
    return kr_loss(input, target, False, reduction=reduction, gather_distributed=gather_distributed)


def kr_loss_multi_gpu(input: Tensor, target: Tensor, *, reduction: str = "none",
                      gather_distributed: bool = False) -> Tensor:
    """:func:`kr_loss` with targets that hold the KR weights (see :func:`process_labels_for_multi_gpu`).

    deel-torchlip's ``kr_loss_multi_gpu``: the per-sample loss is ``mean_c(input * target)``.

    Args:
        input: logits (N,), (N, 1) or (N, C).
        target: the weights from :func:`process_labels_for_multi_gpu`, same number of elements.
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.kr_loss_multi_gpu(torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [-0.5]]))
        tensor([1.0000, 0.5000])
    """
    return kr_loss(input, target, True, reduction=reduction, gather_distributed=gather_distributed)


def neg_kr_loss(input: Tensor, target: Tensor, multi_gpu: bool = False, *, reduction: str = "none",
                gather_distributed: bool = False) -> Tensor:
    r"""Negative KR estimate: :math:`-\ell_i` of :func:`kr_loss` (minimize it to train a critic).

    Args:
        input: logits (N,), (N, 1) or (N, C).
        target: labels, as in :func:`kr_loss`.
        multi_gpu: ``target`` holds the KR weights (see :func:`process_labels_for_multi_gpu`).
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.neg_kr_loss(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0]), reduction="mean")
        tensor(-3.)
    """
    x, t, reduction = _prepare("neg_kr_loss", input, target, reduction, gather_distributed, True)
    return _hkr_core(x, t, 0.0, 1.0, 1.0, bool(multi_gpu), False, reduction)


def hinge_margin_loss(input: Tensor, target: Tensor, min_margin: float = 1.0, *, reduction: str = "none",
                      gather_distributed: bool = False) -> Tensor:
    r"""Hinge loss with margin, per sample.

    .. math::
        \ell_i = \frac{1}{C} \sum_c \max(0, m/2 - y_{ic} f_c(x_i)), \qquad y = \pm 1

    Args:
        input: logits (N,), (N, 1) or (N, C).
        target: labels ({0, 1}, {-1, 1}; positive where > 0), same number of elements.
        min_margin: margin m (samples are pushed beyond m / 2 on their side).
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> LF.hinge_margin_loss(torch.tensor([[0.2], [-1.0]]), torch.tensor([1, -1]))
        tensor([0.3000, 0.0000])
    """
    x, t, reduction = _prepare("hinge_margin_loss", input, target, reduction, gather_distributed, True)
    return _hkr_core(x, t, 1.0, float(min_margin), 1.0, False, False, reduction)


def hkr_loss(input: Tensor, target: Tensor, alpha: float, min_margin: float = 1.0, multi_gpu: bool = False,
             *, reduction: str = "none", gather_distributed: bool = False) -> Tensor:
    r"""Hinge-regularized KR loss (Serrurier et al. 2021), per sample.

    .. math::
        \ell_i = \alpha\, \mathrm{hinge}_i - (1 - \alpha)\, \mathrm{KR}_i

    with the terms of :func:`hinge_margin_loss` and :func:`kr_loss`.

    Args:
        input: logits (N,), (N, 1) or (N, C).
        target: labels, as in :func:`kr_loss`.
        alpha: weight of the hinge in [0, 1] (0: KR only, 1: hinge only); ValueError outside.
        min_margin: margin m of the hinge.
        multi_gpu: ``target`` holds the KR weights (see :func:`process_labels_for_multi_gpu`).
        reduction: 'none' (default) | 'mean' | 'sum' | 'auto'.
        gather_distributed: compute over the global batch of all ranks.

    Returns:
        Per-sample loss (N,) or its reduction.

    Examples:
        >>> import liptriton.functional as LF
        >>> x, y = torch.tensor([[0.2], [-1.0]]), torch.tensor([1, 0])
        >>> LF.hkr_loss(x, y, alpha=0.5, reduction="mean")
        tensor(-0.5250)
    """
    alpha = check_alpha("hkr_loss", alpha)
    x, t, reduction = _prepare("hkr_loss", input, target, reduction, gather_distributed, True)
    return _hkr_core(x, t, alpha, float(min_margin), 1.0, bool(multi_gpu), False, reduction)


@compiled_functional
def _process_labels(labels: Tensor) -> Tensor:
    dtype = labels.dtype if labels.is_floating_point() else torch.float32
    pos, neg = kr_weights(labels, dtype)
    return torch.where(labels > 0, pos, neg)


def process_labels_for_multi_gpu(labels: Tensor) -> Tensor:
    """Turn labels into KR weights for the ``multi_gpu=True`` losses (deel-torchlip's recipe).

    Each label becomes ``1 / p_c`` if positive and ``-1 / (1 - p_c)`` otherwise, ``p_c`` the
    fraction of positives of its column in this (local) batch; 0 for a column side with no
    sample. Prefer ``gather_distributed=True``, which uses the global batch.

    Args:
        labels: (N, 1) binary or (N, C) one-hot labels; positive where > 0.

    Returns:
        Float tensor of the shape of ``labels`` (their dtype if floating, else float32).

    Examples:
        >>> process_labels_for_multi_gpu(torch.tensor([[1.0], [0.0], [0.0], [0.0]])).flatten()
        tensor([ 4.0000, -1.3333, -1.3333, -1.3333])
    """
    if not isinstance(labels, Tensor) or labels.dim() == 0 or labels.shape[0] == 0:
        raise ValueError("process_labels_for_multi_gpu: labels must be a tensor with a non-empty batch "
                         f"dimension, got {getattr(labels, 'shape', type(labels).__name__)}")
    return _process_labels(labels)
