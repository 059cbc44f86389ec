"""Argument checks of the parametrizations' registering functions (errors name the owner and the
argument), and the deprecated-keyword mapping."""

from __future__ import annotations

import math
import warnings
from typing import Any

from liptriton.parametrizations._certified import BOUNDS

__all__ = ["check_bound", "check_iters", "check_positive", "renamed"]


def check_positive(owner: str, arg: str, value: float) -> float:
    """Return ``float(value)`` or raise a ValueError naming ``owner`` and ``arg``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a finite number > 0, got {value!r}")
    return float(value)


def check_iters(owner: str, arg: str, value: int | None, optional: bool = False) -> int | None:
    """Return ``value`` if it is an int >= 1 (or None when ``optional``), else raise a ValueError
    naming ``owner`` and ``arg``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {arg} must be an integer >= 1, got {value!r}")
    return value


def renamed(owner: str, deprecated: dict[str, Any], renames: dict[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """Map deprecated keyword arguments to their new names, with a DeprecationWarning each.

    Args:
        owner: the function, for messages.
        deprecated: the keyword arguments not in the signature (``**deprecated``).
        renames: ``{old name: new name}``.
        values: the new names' values as passed; updated with the deprecated ones.

    Returns:
        ``values``.

    Raises:
        TypeError: an argument that is neither in the signature nor a deprecated name; both the
            old and the new name given.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True):
        ...     renamed("f", {"n_iters": 3}, {"n_iters": "power_iters"}, {"power_iters": None})
        {'power_iters': 3}
    """
    for old, value in deprecated.items():
        if old not in renames:
            raise TypeError(f"{owner}: unexpected keyword argument {old!r}")
        new = renames[old]
        warnings.warn(f"{owner}: {old} is deprecated, use {new} (same meaning)", DeprecationWarning, stacklevel=3)
        values[new] = value
    return values


def check_bound(owner: str, bound: str) -> str:
    """Return ``bound`` if it is "certified" or "estimate", else raise a ValueError naming ``owner``."""
    if bound not in BOUNDS:
        raise ValueError(f"{owner}: bound must be one of {BOUNDS}, got {bound!r}")
    return bound
