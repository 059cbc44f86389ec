"""Loss modules: KR, hinge and HKR (binary and multiclass), with deel-torchlip's constructors.

Each class follows torch.nn's loss conventions (``reduction`` 'none' | 'mean' | 'sum', plus
'auto' = 'mean') and adds ``gather_distributed`` (compute over the global batch of all ranks,
all-gather with autograd). The arithmetic is that of :mod:`liptriton.functional`. The
soft / LSE / categorical / temperature losses are in :mod:`liptriton.nn.losses_multiclass`.
"""

from __future__ import annotations

import warnings

import torch  # noqa: F401  (used by the examples)
from torch import Tensor
from torch.nn.modules.loss import _Loss

from liptriton.functional import _loss_utils
from liptriton.functional import losses as LF
from liptriton.functional import losses_multiclass as LFM

__all__ = ["KRLoss", "NegKRLoss", "HingeMarginLoss", "HKRLoss", "KRMulticlassLoss", "HingeMulticlassLoss",
           "HKRMulticlassLoss"]


def compat_alpha(cls: str, alpha: float) -> float:
    """alpha in [0, 1] as is; alpha > 1 (deprecated) becomes alpha / (1 + alpha) with a warning."""
    alpha = float(alpha)
    if 0.0 <= alpha <= 1.0:
        return alpha
    if alpha > 1.0:
        warnings.warn(f"{cls}: alpha > 1 is deprecated, alpha should be in [0, 1]; using "
                      f"alpha / (1 + alpha) = {alpha / (1.0 + alpha)}", FutureWarning, stacklevel=3)
        return alpha / (1.0 + alpha)
    raise ValueError(f"{cls}: alpha must be in [0, 1] (or > 1, deprecated), got {alpha}")


class LipschitzLoss(_Loss):
    """Base of the liptriton losses: validated ``reduction`` and ``gather_distributed``."""

    def __init__(self, reduction: str = "mean", gather_distributed: bool = False) -> None:
        super().__init__(reduction=_loss_utils.check_reduction(type(self).__name__, reduction))
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, gather_distributed={self.gather_distributed}"


def _no_true_values(cls: str, true_values: object) -> None:
    if true_values is not None:
        raise ValueError(f"{cls}: true_values is deprecated and must be None (labels are positive where "
                         f"target > 0)")


class KRLoss(LipschitzLoss):
    r"""Kantorovich-Rubinstein estimate of the Wasserstein-1 distance between the two classes.

    .. math::
        \mathcal{W}_1(\mu, \nu) = \sup_{f \in \mathrm{Lip}_1}
        \mathbb{E}_{x \sim \mu}[f(x)] - \mathbb{E}_{x \sim \nu}[f(x)]

    :math:`\mu`: samples with ``target > 0``, :math:`\nu`: the others. The per-sample terms
    (see :func:`liptriton.functional.kr_loss`) average to this difference of means. Maximize
    it (or minimize :class:`NegKRLoss`) to train a critic. A batch with one class only gives the
    mean of that class's logits (negated for the negative class; the absent expectation counts
    as 0), as deel-torchlip 1.0.5: not an error, since small batches of a critic can hold one
    class; use batches with both classes for a meaningful estimate.

    Args:
        multi_gpu: ``target`` was preprocessed by
            :func:`liptriton.functional.process_labels_for_multi_gpu` (deel-torchlip recipe).
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        true_values: deprecated, must be None.
        gather_distributed: compute over the global batch of all ranks (the recommended way
            to train with DDP: loss and gradients equal those of the full batch).

    Shape:
        input (N,), (N, 1) or (N, C); target with as many elements, or class indices (N,).

    Examples:
        >>> loss_fn = KRLoss()
        >>> loss_fn(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0]))
        tensor(3.)
    """

    def __init__(self, multi_gpu: bool = False, reduction: str = "mean", true_values=None,
                 gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        _no_true_values(type(self).__name__, true_values)
        self.multi_gpu = bool(multi_gpu)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LF.kr_loss(input, target, self.multi_gpu, reduction=self.reduction,
                          gather_distributed=self.gather_distributed)


class NegKRLoss(KRLoss):
    r"""Negative KR estimate, :math:`-\mathcal{W}_1`: minimize it to train a critic (see :class:`KRLoss`).

    Args:
        multi_gpu: ``target`` was preprocessed by ``process_labels_for_multi_gpu``.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        true_values: deprecated, must be None.
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = NegKRLoss()
        >>> loss_fn(torch.tensor([[2.0], [-1.0]]), torch.tensor([1, 0]))
        tensor(-3.)
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LF.neg_kr_loss(input, target, self.multi_gpu, reduction=self.reduction,
                              gather_distributed=self.gather_distributed)


class HingeMarginLoss(LipschitzLoss):
    r"""Hinge loss with margin: :math:`\mathbb{E}[\max(0, m/2 - y f(x))]`, :math:`y = \pm 1`.

    Args:
        min_margin: margin m to enforce.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = HingeMarginLoss(min_margin=1.0)
        >>> loss_fn(torch.tensor([[0.2], [-1.0]]), torch.tensor([1, -1]))
        tensor(0.1500)
    """

    def __init__(self, min_margin: float = 1.0, reduction: str = "mean",
                 gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        self.min_margin = float(min_margin)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LF.hinge_margin_loss(input, target, self.min_margin, reduction=self.reduction,
                                    gather_distributed=self.gather_distributed)


class HKRLoss(LipschitzLoss):
    r"""Hinge-regularized KR loss (Serrurier et al. 2021), binary or multi-label.

    .. math::
        \mathcal{L} = \alpha\, \mathbb{E}[\max(0, m/2 - y f(x))]
        - (1 - \alpha) \big(\mathbb{E}_{\mu}[f] - \mathbb{E}_{\nu}[f]\big)

    Args:
        alpha: hinge weight in [0, 1] (0: KR only, 1: hinge only); alpha > 1 is deprecated and
            becomes alpha / (1 + alpha) with a warning; alpha < 0 raises ValueError.
        min_margin: margin m of the hinge.
        multi_gpu: ``target`` was preprocessed by ``process_labels_for_multi_gpu``.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        true_values: deprecated, must be None.
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = HKRLoss(alpha=0.5)
        >>> loss_fn(torch.tensor([[0.2], [-1.0]]), torch.tensor([1, 0]))
        tensor(-0.5250)
    """

    def __init__(self, alpha: float, min_margin: float = 1.0, multi_gpu: bool = False,
                 reduction: str = "mean",
                 true_values=None, gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        _no_true_values(type(self).__name__, true_values)
        self.alpha = compat_alpha(type(self).__name__, alpha)
        self.min_margin = float(min_margin)
        self.multi_gpu = bool(multi_gpu)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LF.hkr_loss(input, target, self.alpha, self.min_margin, self.multi_gpu,
                           reduction=self.reduction, gather_distributed=self.gather_distributed)


class KRMulticlassLoss(LipschitzLoss):
    r"""KR estimate averaged over classes, each class against the rest (one-vs-rest).

    .. math::
        \mathcal{L} = \frac{1}{C} \sum_c \mathbb{E}_{y = c}[f_c(x)] - \mathbb{E}_{y \neq c}[f_c(x)]

    Args:
        multi_gpu: ``target`` was preprocessed by ``process_labels_for_multi_gpu``.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = KRMulticlassLoss()
        >>> loss_fn(torch.randn(8, 3), torch.arange(8) % 3).shape
        torch.Size([])
    """

    def __init__(self, multi_gpu: bool = False, reduction: str = "mean",
                 gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        self.multi_gpu = bool(multi_gpu)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LF.kr_loss(input, target, self.multi_gpu, reduction=self.reduction,
                          gather_distributed=self.gather_distributed)


class HingeMulticlassLoss(LipschitzLoss):
    r"""Multiclass hinge: the binary hinge on every logit, the true class weighted by C - 1.

    .. math::
        \mathcal{L} = \mathbb{E}\Big[\tfrac{1}{C}\big((C-1)\max(0, m/2 - f_y)
        + \textstyle\sum_{c \neq y} \max(0, m/2 + f_c)\big)\Big]

    Args:
        min_margin: margin m to enforce.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = HingeMulticlassLoss(min_margin=1.0)
        >>> loss_fn(torch.tensor([[0.1, -0.2, 0.3]]), torch.tensor([0]))
        tensor(0.6333)
    """

    def __init__(self, min_margin: float = 1.0, reduction: str = "mean",
                 gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        self.min_margin = float(min_margin)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LFM.hinge_multiclass_loss(input, target, self.min_margin, reduction=self.reduction,
                                         gather_distributed=self.gather_distributed)


class HKRMulticlassLoss(LipschitzLoss):
    r"""Multiclass HKR: :math:`\alpha` multiclass hinge :math:`- (1 - \alpha)` multiclass KR.

    .. math::
        \mathcal{L} = \alpha\, \mathcal{L}_{hinge}^{mc} - (1 - \alpha)\, \mathcal{L}_{KR}^{mc}

    Args:
        alpha: hinge weight in [0, 1]; alpha > 1 is deprecated and becomes alpha / (1 + alpha)
            with a warning; alpha < 0 raises ValueError.
        min_margin: margin m of the hinge.
        multi_gpu: ``target`` was preprocessed by ``process_labels_for_multi_gpu``.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = HKRMulticlassLoss(alpha=0.98, min_margin=0.1)
        >>> loss_fn(torch.randn(8, 10), torch.arange(8)).shape
        torch.Size([])
    """

    def __init__(self, alpha: float, min_margin: float = 1.0, multi_gpu: bool = False,
                 reduction: str = "mean",
                 gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        self.alpha = compat_alpha(type(self).__name__, alpha)
        self.min_margin = float(min_margin)
        self.multi_gpu = bool(multi_gpu)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LFM.hkr_multiclass_loss(input, target, self.alpha, self.min_margin, self.multi_gpu,
                                       reduction=self.reduction, gather_distributed=self.gather_distributed)
