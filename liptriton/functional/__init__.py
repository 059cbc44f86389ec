"""Activations and losses as functions: compile-friendly, compiled on first use where it pays.

See :func:`liptriton.config.compile_functionals` for the switch.
"""

__all__: list[str] = []
