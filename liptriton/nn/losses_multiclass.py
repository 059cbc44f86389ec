"""Loss modules: soft-HKR, LSE-HKR, categorical hinge and the temperature (tau) losses."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss

from liptriton.functional import _loss_utils
from liptriton.functional import losses_multiclass as LFM
from liptriton.nn.losses import LipschitzLoss, compat_alpha

__all__ = ["SoftHKRMulticlassLoss", "LseHKRMulticlassLoss", "CategoricalHingeLoss", "TauCrossEntropyLoss",
           "TauBCEWithLogitsLoss"]


class SoftHKRMulticlassLoss(LipschitzLoss):
    r"""Multiclass HKR with the other classes weighted by a softmax (Serrurier et al. 2024).

    With the signed logits :math:`s_{ic} = \pm f_c(x_i)` and weights :math:`w_{ic} = 1` on the true
    class, :math:`\mathrm{softmax}_{c \neq y}(T f_c(x_i))` elsewhere:

    .. math::
        \ell_i = \sum_c w_{ic}\big(-(1 - \alpha) s_{ic} + \alpha \max(0, m/2 - s_{ic})\big)

    The temperature :math:`T = \mathrm{clip}(\tau m / \mathrm{clip}(\mu, m, 2\cdot10^4), 0.005, 250)`
    follows the running mean :math:`\mu \leftarrow a \mu + (1 - a)\,\mathrm{mean}|f|`, kept in
    the buffer ``current_mean`` (in the state_dict; updated at each forward in training mode;
    with ``gather_distributed`` from the global batch, so equal on every rank).

    Args:
        alpha: hinge weight in [0, 1]; alpha > 1 is deprecated (alpha / (1 + alpha), warning).
        min_margin: margin m.
        alpha_mean: momentum a of the running mean of :math:`|f|`.
        temperature: temperature factor :math:`\tau` (higher: more weight on the largest wrong logit).
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = SoftHKRMulticlassLoss(alpha=0.9, min_margin=1.0)
        >>> loss = loss_fn(torch.randn(8, 10), torch.arange(8))
        >>> "current_mean" in loss_fn.state_dict()
        True
    """

    current_mean: Tensor

    def __init__(self, alpha: float = 0.9, min_margin: float = 1.0, alpha_mean: float = 0.99,
                 temperature: float = 1.0, reduction: str = "mean", gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        self.alpha = compat_alpha(type(self).__name__, alpha)
        self.min_margin = float(min_margin)
        self.alpha_mean = float(alpha_mean)
        self.temperature = float(temperature)
        self.register_buffer("current_mean", torch.tensor([self.min_margin], dtype=torch.float32))

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        loss, new_mean = LFM.soft_hkr_multiclass_loss(
            input, target, self.current_mean, self.alpha, self.min_margin, self.alpha_mean, self.temperature,
            reduction=self.reduction, gather_distributed=self.gather_distributed)
        if self.training:
            with torch.no_grad():
                self.current_mean.copy_(new_mean)
        return loss


class LseHKRMulticlassLoss(LipschitzLoss):
    r"""HKR on the true logit against a log-sum-exp of the others (see
    :func:`liptriton.functional.lse_hkr_multiclass_loss`).

    .. math::
        \ell_i = (1 - \alpha)(\mathrm{lse}_i - z_{iy}) + \alpha\big(\max(0, m/2 - z_{iy})
        + \max(0, m/2 + \mathrm{lse}_i)\big), \quad z = \tau f

    Args:
        alpha: hinge weight in [0, 1]; alpha > 1 is deprecated (alpha / (1 + alpha), warning).
        temperature: factor :math:`\tau` on the logits (KR and hinge).
        penalty: the log-sum-exp lies between the max of the other logits and that max +
            penalty * m / 2.
        min_margin: margin m.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = LseHKRMulticlassLoss(alpha=0.9)
        >>> loss_fn(torch.randn(8, 10), torch.arange(8)).shape
        torch.Size([])
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 1.0, penalty: float = 1.0,
                 min_margin: float = 1.0,
                 reduction: str = "mean", gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        self.alpha = compat_alpha(type(self).__name__, alpha)
        self.temperature = float(temperature)
        self.penalty = float(penalty)
        self.min_margin = float(min_margin)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LFM.lse_hkr_multiclass_loss(input, target, self.alpha, self.temperature, self.penalty,
                                           self.min_margin, reduction=self.reduction,
                                           gather_distributed=self.gather_distributed)


class CategoricalHingeLoss(LipschitzLoss):
    r"""Categorical hinge: :math:`\max(0, m - (f_y - \max(f_y - m, \max_{c \neq y} f_c)))`.

    Differs from ``torch.nn.MultiMarginLoss``: one term per sample, against the largest other logit.

    Args:
        min_margin: margin m.
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        gather_distributed: compute over the global batch of all ranks.

    Examples:
        >>> loss_fn = CategoricalHingeLoss(min_margin=1.0)
        >>> loss_fn(torch.tensor([[2.0, 0.5, 0.0]]), torch.tensor([0]))
        tensor(0.)
    """

    def __init__(self, min_margin: float = 1.0, reduction: str = "mean",
                 gather_distributed: bool = False) -> None:
        super().__init__(reduction, gather_distributed)
        self.min_margin = float(min_margin)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return LFM.categorical_hinge_loss(input, target, self.min_margin, reduction=self.reduction,
                                          gather_distributed=self.gather_distributed)


def _check_tau(cls: str, tau: float) -> float:
    tau = float(tau)
    if not tau > 0.0:
        raise ValueError(f"{cls}: tau must be > 0, got {tau}")
    return tau


class TauCrossEntropyLoss(CrossEntropyLoss):
    r"""Cross-entropy with temperature: :math:`\mathrm{CE}(\tau x, y) / \tau`.

    Args:
        tau: temperature factor (> 0).
        weight: class weights, as ``torch.nn.CrossEntropyLoss``.
        size_average: deprecated (torch).
        ignore_index: target index ignored (class-index targets).
        reduce: deprecated (torch).
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        label_smoothing: as ``torch.nn.CrossEntropyLoss``.

    Shape:
        input (N, C); target class indices (N,) or probabilities / one-hot (N, C).

    Examples:
        >>> loss_fn = TauCrossEntropyLoss(tau=10.0)
        >>> loss_fn(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    def __init__(self, tau: float, weight: Tensor | None = None, size_average=None, ignore_index: int = -100,
                 reduce=None, reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        reduction = _loss_utils.check_reduction(type(self).__name__, reduction)
        super().__init__(weight=weight, size_average=size_average, ignore_index=ignore_index, reduce=reduce,
                         reduction=reduction, label_smoothing=label_smoothing)
        self.tau = _check_tau(type(self).__name__, tau)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if input.shape == target.shape:
            return super().forward(input * self.tau, target.to(input.dtype)) / self.tau
        return super().forward(input * self.tau, target.to(torch.int64)) / self.tau


class TauBCEWithLogitsLoss(BCEWithLogitsLoss):
    r"""Binary cross-entropy on logits with temperature: :math:`\mathrm{BCE}(\tau x, [y > 0]) / \tau`.

    Labels are positive where ``target > 0`` ({0, 1} and {-1, 1} both work).

    Args:
        tau: temperature factor (> 0).
        weight: element weights, as ``torch.nn.BCEWithLogitsLoss``.
        size_average: deprecated (torch).
        reduce: deprecated (torch).
        reduction: 'none' | 'mean' | 'sum' | 'auto' (= 'mean').
        pos_weight: weight of positive examples, as ``torch.nn.BCEWithLogitsLoss``.

    Examples:
        >>> loss_fn = TauBCEWithLogitsLoss(tau=5.0)
        >>> loss_fn(torch.randn(4, 1), torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])).shape
        torch.Size([])
    """

    def __init__(self, tau: float, weight: Tensor | None = None, size_average=None, reduce=None,
                 reduction: str = "mean", pos_weight: Tensor | None = None) -> None:
        reduction = _loss_utils.check_reduction(type(self).__name__, reduction)
        super().__init__(weight=weight, size_average=size_average, reduce=reduce, reduction=reduction,
                         pos_weight=pos_weight)
        self.tau = _check_tau(type(self).__name__, tau)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        if target.numel() != input.numel():
            raise ValueError(f"TauBCEWithLogitsLoss: target of shape {tuple(target.shape)} does not match "
                             f"input of shape {tuple(input.shape)}")
        true_target = (target.reshape(input.shape) > 0).to(input.dtype)
        return super().forward(input * self.tau, true_target) / self.tau
