"""Deprecated: moved to :mod:`liptriton.functional.sqrt_with_gradeps` (a torch function, no kernel)."""

from liptriton.ops._moved import moved

globals().update(moved(__name__, "liptriton.functional.sqrt_with_gradeps"))
