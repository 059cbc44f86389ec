"""Deprecated module paths of liptriton.ops: the guaranteed bounds and the operator geometry moved
to :mod:`liptriton.bounds`, ``sqrt_eps`` (no kernel) to :mod:`liptriton.functional.sqrt_with_gradeps`.
Each old module is a two-line shim that calls :func:`moved`."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = ["MOVED", "moved"]

MOVED = ("certified_norm", "conv_bound", "conv_fourier", "conv_operator", "conv_reads", "gram_bound", "sqrt_eps")


def moved(old: str, new: str) -> dict[str, Any]:
    """Warn that module ``old`` is now ``new`` (DeprecationWarning) and return ``new``'s names.

    Args:
        old: the deprecated module's name (the shim's ``__name__``).
        new: the module that holds the code now.

    Returns:
        The public names of ``new`` (its ``__all__``), for the shim's ``globals()``.
    """
    warnings.warn(f"{old} is deprecated: import {new} (same contents)", DeprecationWarning, stacklevel=3)
    module = importlib.import_module(new)
    return {name: getattr(module, name) for name in getattr(module, "__all__", ())}
