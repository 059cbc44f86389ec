"""Runtime switches of liptriton.

Three switches, each a function that sets it, usable as a context manager, with an
environment variable that gives its initial value:

* :func:`force_torch` (``LIPTRITON_FORCE_TORCH=1``): every op takes its pure-torch
  reference, even on CUDA.
* :func:`interpret` (``LIPTRITON_INTERPRET=1``): CPU tensors go through the Triton kernels
  under the Triton interpreter. Triton reads ``TRITON_INTERPRET=1`` when a kernel is
  defined, so that variable must be set before ``liptriton`` is imported; enabling this
  switch without it raises.
* :func:`compile_functionals` (``LIPTRITON_COMPILE=0|1|auto``): whether the public
  activation and loss functions compile themselves on first use ("auto": on CUDA only).

Examples:
    >>> import liptriton
    >>> with liptriton.config.force_torch():
    ...     pass  # every op runs its torch reference here
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["force_torch", "interpret", "compile_functionals", "is_force_torch", "is_interpret",
           "compile_mode"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


_state: dict[str, object] = {
    "force_torch": _env_flag("LIPTRITON_FORCE_TORCH"),
    "interpret": False,
    "compile": os.environ.get("LIPTRITON_COMPILE", "auto").strip().lower(),
}


def _interpreter_active() -> bool:
    return _env_flag("TRITON_INTERPRET")


class _Switch(contextlib.AbstractContextManager):
    """Sets a switch at once; as a context manager, restores the previous value on exit."""

    def __init__(self, key: str, value: object) -> None:
        self._key = key
        self._previous = _state[key]
        _state[key] = value

    def __exit__(self, *exc: object) -> None:
        _state[self._key] = self._previous


def force_torch(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Route every op to its pure-torch reference (or back to automatic dispatch).

    Args:
        enabled: True to force the torch path, False for automatic dispatch (Triton on CUDA).

    Returns:
        A context manager that restores the previous setting on exit; the setting also
        takes effect at once when the result is discarded.

    Examples:
        >>> import liptriton
        >>> _ = liptriton.config.force_torch(True)
        >>> liptriton.config.is_force_torch()
        True
        >>> _ = liptriton.config.force_torch(False)
    """
    return _Switch("force_torch", bool(enabled))


def interpret(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Run the Triton kernels on CPU tensors through the Triton interpreter.

    Args:
        enabled: True to send CPU tensors to the Triton kernels (interpreted), False to
            send them to the torch reference (the default).

    Returns:
        A context manager that restores the previous setting on exit.

    Raises:
        RuntimeError: if enabled while ``TRITON_INTERPRET=1`` was not set in the
            environment before the kernels were defined.

    Examples:
        >>> import liptriton
        >>> liptriton.config.is_interpret()
        False
    """
    if enabled and not _interpreter_active():
        raise RuntimeError(
            "liptriton.config.interpret(True) needs the Triton interpreter: set the environment "
            "variable TRITON_INTERPRET=1 before importing liptriton (and triton)."
        )
    return _Switch("interpret", bool(enabled))


def compile_functionals(mode: bool | str = "auto") -> contextlib.AbstractContextManager:
    """Choose whether public activations and losses compile themselves on first use.

    Args:
        mode: True (always), False (never) or "auto" (only for CUDA tensors).

    Returns:
        A context manager that restores the previous setting on exit.

    Examples:
        >>> import liptriton
        >>> with liptriton.config.compile_functionals(False):
        ...     liptriton.config.compile_mode()
        '0'
    """
    if mode is True or mode == "1":
        value = "1"
    elif mode is False or mode == "0":
        value = "0"
    elif mode == "auto":
        value = "auto"
    else:
        raise ValueError(f"compile_functionals: mode must be True, False or 'auto', got {mode!r}")
    return _Switch("compile", value)


def is_force_torch() -> bool:
    """Return True when every op is forced onto its torch reference."""
    return bool(_state["force_torch"])


def is_interpret() -> bool:
    """Return True when CPU tensors go through the Triton kernels (interpreter)."""
    return bool(_state["interpret"])


def compile_mode() -> str:
    """Return the compile mode of the functionals: '1', '0' or 'auto'."""
    value = str(_state["compile"])
    return {"true": "1", "false": "0", "1": "1", "0": "0"}.get(value, "auto")


if _env_flag("LIPTRITON_INTERPRET"):
    interpret(True)
