"""Deprecated: moved to :mod:`liptriton.bounds.gram_bound` (guaranteed bounds and operator geometry)."""

from liptriton.ops._moved import moved

globals().update(moved(__name__, "liptriton.bounds.gram_bound"))
