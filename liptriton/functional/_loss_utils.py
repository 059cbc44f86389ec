"""Shared validation and helpers of the loss functionals (static checks only: no graph break)."""

from __future__ import annotations

import torch
from torch import Tensor

from liptriton import distributed

__all__ = ["apply_reduction"]

_REDUCTIONS = ("none", "mean", "sum", "auto")


def check_reduction(fn: str, reduction: str) -> str:
    """Return the reduction with 'auto' mapped to 'mean'; raise ValueError on anything else."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return "mean" if reduction == "auto" else reduction


def apply_reduction(val: Tensor, reduction: str) -> Tensor:
    """Reduce a per-sample loss: 'none' (as is), 'mean', 'sum', or 'auto' (= 'mean').

    Args:
        val: per-sample loss values.
        reduction: 'none' | 'mean' | 'sum' | 'auto'.

    Returns:
        ``loss`` itself, its mean or its sum.

    Examples:
        >>> apply_reduction(torch.tensor([1.0, 3.0]), "auto")
        tensor(2.)
    """
    reduction = check_reduction("apply_reduction", reduction)
    if reduction == "mean":
        return val.mean()
    if reduction == "sum":
        return val.sum()
    return val


def check_alpha(fn: str, alpha: float) -> float:
    """alpha must be a number in [0, 1] (the loss classes map alpha > 1 to alpha / (1 + alpha))."""
    if isinstance(alpha, Tensor):
        raise TypeError(f"{fn}: alpha must be a Python number, got a tensor")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{fn}: alpha must be in [0, 1], got {alpha} (the loss classes accept alpha > 1 "
                         f"as the deprecated alpha / (1 + alpha))")
    return alpha


def check_input(fn: str, input: Tensor) -> Tensor:
    """Logits must be floating, of shape (N,) or (N, C), with N >= 1; (N,) becomes (N, 1)."""
    if not isinstance(input, Tensor) or not input.is_floating_point():
        raise TypeError(f"{fn}: input must be a floating-point tensor, got "
                        f"{getattr(input, 'dtype', type(input).__name__)}")
    if input.dim() not in (1, 2):
        raise ValueError(f"{fn}: input must have shape (N,) or (N, C), got {tuple(input.shape)}")
    if input.shape[0] == 0:
        raise ValueError(f"{fn}: empty batch (input of shape {tuple(input.shape)}); a loss over no "
                         f"sample is undefined")
    if input.dim() == 2 and input.shape[1] == 0:
        raise ValueError(f"{fn}: input has no class (shape {tuple(input.shape)})")
    return input.unsqueeze(-1) if input.dim() == 1 else input


def check_target(fn: str, input: Tensor, target: Tensor, allow_indices: bool = True) -> Tensor:
    """Bring ``target`` to the shape of the 2-D ``input``.

    Accepted: the same shape; any shape with as many elements (reshaped, as deel-torchlip's
    ``view``); or, when ``allow_indices`` and C > 1, integer class indices of shape (N,)
    (turned into one-hot). A label is positive where ``target > 0``: {0, 1}, {-1, 1} and
    one-hot encodings all work. In eager mode, class indices outside [0, C) and NaN / inf
    labels raise a ValueError (one host sync per call); under ``torch.compile`` these value
    checks are skipped (they would break the graph).
    """
    if not isinstance(target, Tensor):
        raise TypeError(f"{fn}: target must be a tensor, got {type(target).__name__}")
    if target.is_complex():
        raise TypeError(f"{fn}: target must be real (labels), got dtype {target.dtype}")
    n, c = input.shape
    if target.shape == input.shape:
        return _check_finite_labels(fn, target)
    is_int = not target.is_floating_point() and target.dtype != torch.bool
    if allow_indices and c > 1 and is_int and target.shape in ((n,), (n, 1)):
        _check_index_range(fn, target, c)
        classes = torch.arange(c, device=target.device, dtype=target.dtype)
        return (target.reshape(n, 1) == classes).to(input.dtype)
    if target.numel() == input.numel():
        return _check_finite_labels(fn, target.reshape(input.shape))
    raise ValueError(f"{fn}: target of shape {tuple(target.shape)} does not match input of shape "
                     f"{tuple(input.shape)} (expected the same shape"
                     + (", or integer class indices of shape (N,)" if allow_indices and c > 1 else "") + ")")


def _check_index_range(fn: str, target: Tensor, c: int) -> None:
    """Class indices must lie in [0, C) (eager only: reading values would break a compiled graph)."""
    if torch.compiler.is_compiling() or target.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(target)).tolist()
    if lo < 0 or hi >= c:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{fn}: target holds class index {bad}, outside [0, {c}) for input with {c} classes "
                         f"(expected integer class indices in [0, {c}), or one-hot labels of shape (N, {c}))")


def _check_finite_labels(fn: str, target: Tensor) -> Tensor:
    """Float labels must be finite: a NaN label would silently count as negative (eager only)."""
    if target.is_floating_point() and not torch.compiler.is_compiling() and not bool(torch.isfinite(target).all()):
        bad = int((~torch.isfinite(target)).sum())
        raise ValueError(f"{fn}: target has {bad} NaN / inf labels; expected finite labels ({{0, 1}}, {{-1, 1}} "
                         "or one-hot; positive where > 0)")
    return target


def maybe_gather(input: Tensor, target: Tensor, gather_distributed: bool) -> tuple[Tensor, Tensor]:
    """All-gather input (with autograd) and target over the ranks when asked."""
    if not gather_distributed:
        return input, target
    if target.dtype == torch.bool:  # not every backend gathers bool tensors
        return distributed.gather(input), distributed.gather(target.to(torch.uint8)).bool()
    return distributed.gather(input), distributed.gather(target)


def kr_weights(target: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Per-class KR weights of positive and negative labels: ``1/p`` and ``-1/(1-p)``.

    ``p`` is the fraction of positive labels of each class (column) in the batch. A class with
    no positive (or no negative) sample gets weight 0 for the missing side, so a batch with a
    single class estimates only the expectation it has samples for (deel-torchlip's value,
    which uses ``nan_to_num``): never a NaN.
    """
    mean_pos = (target > 0).to(dtype).mean(dim=0)
    zero = torch.zeros((), dtype=dtype, device=target.device)
    pos = torch.where(mean_pos > 0, 1.0 / torch.where(mean_pos > 0, mean_pos, 1.0), zero)
    neg = torch.where(mean_pos < 1, -1.0 / torch.where(mean_pos < 1, 1.0 - mean_pos, 1.0), zero)
    return pos, neg
