"""Activations and losses as functions: compile-friendly, compiled on first use where it pays.

See :func:`liptriton.config.compile_functionals` for the switch.
"""

__all__: list[str] = []

from liptriton.functional.activations import (  # noqa: E402
    full_sort,
    group_sort,
    group_sort_2,
    householder_activation,
    lipschitz_prelu,
    max_min,
)

__all__ += ["max_min", "group_sort", "group_sort_2", "full_sort", "lipschitz_prelu", "householder_activation"]
