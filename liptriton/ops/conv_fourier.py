"""Deprecated: moved to :mod:`liptriton.bounds.conv_fourier` (guaranteed bounds and operator geometry)."""

from liptriton.ops._moved import moved

globals().update(moved(__name__, "liptriton.bounds.conv_fourier"))
