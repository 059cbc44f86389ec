"""Compile-on-first-use for the public functionals (activations and losses).

A function wrapped by :func:`compiled_functional` runs eagerly, or through one cached
``torch.compile(fn, dynamic=True)`` when :func:`liptriton.config.compile_mode` says so for
the input's device ("auto": CUDA only). Inside a user's compiled region it always calls the
plain function, so Dynamo inlines it (no graph break, no nested compile).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

from liptriton import config

F = TypeVar("F", bound=Callable)

__all__ = ["compiled_functional"]


def _wants_compile(args: tuple, kwargs: dict) -> bool:
    mode = config.compile_mode()
    if mode == "0":
        return False
    tensor = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
    if tensor is None:
        return False
    return mode == "1" or tensor.device.type == "cuda"


def compiled_functional(fn: F) -> F:
    """Wrap ``fn`` so that it compiles on first use where the config asks for it.

    Args:
        fn: a compile-friendly function of tensors (no data-dependent Python control flow).

    Returns:
        A function with the same signature and docstring.

    Examples:
        >>> @compiled_functional
        ... def double(x):
        ...     return 2 * x
        >>> double(torch.ones(2))
        tensor([2., 2.])
    """
    compiled: list[Callable] = []

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling() or not _wants_compile(args, kwargs):
            return fn(*args, **kwargs)
        if not compiled:
            compiled.append(torch.compile(fn, dynamic=True, fullgraph=True))
        return compiled[0](*args, **kwargs)

    wrapper.__wrapped_eager__ = fn  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]
