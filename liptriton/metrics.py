r"""Certified robustness of Lipschitz classifiers: radii, certified robust accuracy, ACR.

For a classifier whose logit map is L-Lipschitz in the l2 norm, no perturbation of norm
below the certified radius can change the prediction:

* binary (one logit f, predicted class ``f > 0``): :math:`r = |f(x)| / L`;
* multiclass, the whole logit map L-Lipschitz: :math:`r = (f_y - \max_{j \neq y} f_j) / (\sqrt{2} L)`;
* multiclass with disjoint neurons (each logit L-Lipschitz on its own, e.g. a last layer with
  rows of norm <= 1, ``disjoint_neurons=True``): :math:`r = (f_y - \max_{j \neq y} f_j) / (2 L)`.

Given labels, the radius is signed: negative for a misclassified sample (its margin is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["certified_radius", "certified_robust_accuracy", "average_certified_radius"]


def _check(fn: str, logits: Tensor, lipschitz_constant: float) -> Tensor:
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"{fn}: logits must be a floating-point tensor")
    if logits.dim() not in (1, 2) or logits.shape[0] == 0 or (logits.dim() == 2 and logits.shape[1] == 0):
        raise ValueError(f"{fn}: logits must have shape (N,) or (N, C) with N, C >= 1, "
                         f"got {tuple(logits.shape)}")
    if not float(lipschitz_constant) > 0.0:
        raise ValueError(f"{fn}: lipschitz_constant must be > 0, got {lipschitz_constant}")
    return logits.unsqueeze(-1) if logits.dim() == 1 else logits


def _labels(fn: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Labels as a boolean (N,) 'positive' mask (binary) or class indices (N,) (multiclass)."""
    n, c = logits.shape
    if c == 1:
        if labels.numel() != n:
            raise ValueError(f"{fn}: binary labels must have N={n} elements, got shape {tuple(labels.shape)}")
        return labels.reshape(n) > 0
    if labels.shape == (n, c):
        return labels.argmax(dim=-1)
    if labels.shape == (n,) and not labels.is_floating_point():
        return labels
    raise ValueError(f"{fn}: labels must be class indices (N,) or one-hot (N, C) for logits of shape "
                     f"{tuple(logits.shape)}, got {tuple(labels.shape)}")


def certified_radius(logits: Tensor, labels: Tensor | None = None, lipschitz_constant: float = 1.0,
                     disjoint_neurons: bool = False) -> Tensor:
    r"""Certified l2 radius of each sample.

    Binary (logits (N,) or (N, 1)): :math:`r = y f / L` with :math:`y = \pm 1` the label
    (positive where ``labels > 0``), or :math:`|f| / L` without labels. Multiclass (N, C):

    .. math::
        r = \frac{f_y - \max_{j \neq y} f_j}{\sqrt{2}\, L}
        \quad\text{or}\quad \frac{f_y - \max_{j \neq y} f_j}{2 L}\ \text{(disjoint neurons)}

    with y the label, or the predicted class without labels (then r >= 0).

    Args:
        logits: model outputs (N,), (N, 1) or (N, C).
        labels: binary labels (N,) / (N, 1), class indices (N,) or one-hot (N, C); None for the
            radius of the prediction.
        lipschitz_constant: L, an upper bound of the model's l2 Lipschitz constant (> 0).
        disjoint_neurons: each logit is L-Lipschitz on its own (divide by 2L instead of
            sqrt(2) L).

    Returns:
        Radii (N,), float; negative for misclassified samples when labels are given.

    Examples:
        >>> certified_radius(torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([0]))
        tensor([1.4142])
    """
    x = _check("certified_radius", logits, lipschitz_constant)
    n, c = x.shape
    if c == 1:
        f = x.reshape(n)
        if labels is None:
            return f.abs() / lipschitz_constant
        pos = _labels("certified_radius", x, labels)
        return torch.where(pos, f, -f) / lipschitz_constant
    scale = (2.0 if disjoint_neurons else math.sqrt(2.0)) * lipschitz_constant
    if labels is None:
        top2 = x.topk(2, dim=-1).values
        return (top2[:, 0] - top2[:, 1]) / scale
    y = _labels("certified_radius", x, labels)
    f_y = x.gather(1, y.reshape(n, 1).long()).squeeze(1)
    others = x.scatter(1, y.reshape(n, 1).long(), -math.inf)
    return (f_y - others.amax(dim=-1)) / scale


def certified_robust_accuracy(logits: Tensor, labels: Tensor, eps: float | Sequence[float] | Tensor,
                              lipschitz_constant: float = 1.0, disjoint_neurons: bool = False) -> Tensor:
    r"""Fraction of samples correctly classified with a certified radius larger than eps.

    .. math::
        \mathrm{CRA}(\varepsilon) = \frac{1}{N} \sum_i \mathbb{1}[r_i > \varepsilon]

    with :math:`r_i` the signed radius of :func:`certified_radius` (so eps = 0 gives the clean
    accuracy, ties counted as errors).

    Args:
        logits: model outputs (N,), (N, 1) or (N, C).
        labels: binary labels, class indices (N,) or one-hot (N, C).
        eps: one radius, or several (sequence or 1-D tensor).
        lipschitz_constant: L (> 0).
        disjoint_neurons: each logit is L-Lipschitz on its own.

    Returns:
        A 0-dim tensor for one eps, a 1-D tensor (one accuracy per eps) for several.

    Examples:
        >>> logits = torch.tensor([[3.0, 1.0], [0.0, 0.5], [1.0, 2.0]])
        >>> certified_robust_accuracy(logits, torch.tensor([0, 1, 0]), [0.0, 0.5])
        tensor([0.6667, 0.3333])
    """
    r = certified_radius(logits, labels, lipschitz_constant, disjoint_neurons)
    eps_t = torch.as_tensor(eps, dtype=r.dtype, device=r.device)
    if eps_t.dim() > 1:
        raise ValueError(f"certified_robust_accuracy: eps must be a number or a 1-D sequence, got shape "
                         f"{tuple(eps_t.shape)}")
    return (r.unsqueeze(-1) > eps_t.reshape(-1)).to(r.dtype).mean(dim=0).reshape(eps_t.shape)


def average_certified_radius(logits: Tensor, labels: Tensor, lipschitz_constant: float = 1.0,
                             disjoint_neurons: bool = False) -> Tensor:
    r"""Average certified radius (ACR): mean of the radius of correct samples, 0 for the others.

    .. math::
        \mathrm{ACR} = \frac{1}{N} \sum_i \max(r_i, 0)

    Args:
        logits: model outputs (N,), (N, 1) or (N, C).
        labels: binary labels, class indices (N,) or one-hot (N, C).
        lipschitz_constant: L (> 0).
        disjoint_neurons: each logit is L-Lipschitz on its own.

    Returns:
        A 0-dim tensor.

    Examples:
        >>> average_certified_radius(torch.tensor([2.0, -1.0]), torch.tensor([1, 1]))
        tensor(1.)
    """
    return certified_radius(logits, labels, lipschitz_constant, disjoint_neurons).clamp_min(0).mean()
