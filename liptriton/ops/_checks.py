"""Argument checks shared by the ops (and their functional wrappers)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["normalize_dim"]


def normalize_dim(x: Tensor, dim: int, who: str) -> int:
    """Return ``dim`` in [0, x.dim()) (negative dims count from the end), or raise.

    Args:
        x: the input tensor.
        dim: a dimension index, possibly negative.
        who: the function or module named in the error.

    Returns:
        The non-negative dimension index.

    Examples:
        >>> normalize_dim(torch.zeros(2, 3, 4), -1, "GroupSort")
        2
    """
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"{who}: dim must be an int, got {type(dim).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"{who}: dim must be in [{-x.dim()}, {x.dim()}) for an input of shape "
                         f"{tuple(x.shape)}, got {dim}")
    return dim % x.dim()
