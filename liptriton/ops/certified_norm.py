"""Deprecated: moved to :mod:`liptriton.bounds.certified_norm` (guaranteed bounds and operator geometry)."""

from liptriton.ops._moved import moved

globals().update(moved(__name__, "liptriton.bounds.certified_norm"))
