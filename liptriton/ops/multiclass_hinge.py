"""Deprecated module name: the op ``multiclass_hkr`` lives in :mod:`liptriton.ops.multiclass_hkr`.

Importing this module warns (DeprecationWarning) and re-exports the op and its reference.
"""

from __future__ import annotations

import warnings

from liptriton.ops.multiclass_hkr import multiclass_hkr, multiclass_hkr_reference

__all__ = ["multiclass_hkr", "multiclass_hkr_reference"]

warnings.warn("liptriton.ops.multiclass_hinge is deprecated: import liptriton.ops.multiclass_hkr (same op)",
              DeprecationWarning, stacklevel=2)
