"""Triton-backed operations: one file each, the public op, its pure-torch reference, and the dispatch
(Triton kernels from :mod:`liptriton.kernels` on CUDA, the reference elsewhere), registered through
:func:`liptriton.ops._register.register_triton_op`. Guaranteed bounds and operator geometry (no
kernel) are in :mod:`liptriton.bounds`."""

from liptriton.ops.bjorck import bjorck, bjorck_coefficients, bjorck_reference, bjorck_vjp_reference
from liptriton.ops.bjorck_eigh import bjorck_eigh, eigh_pays
from liptriton.ops.bjorck_gram import (
    bjorck_gram,
    bjorck_gram_reference,
    bjorck_gram_vjp_reference,
    gram_pays,
)
from liptriton.ops.frobenius import frobenius_normalize, frobenius_normalize_reference
from liptriton.ops.group_sort import full_sort, group_sort, group_sort_reference
from liptriton.ops.householder import householder_product, householder_product_reference
from liptriton.ops.max_min import max_min, max_min_reference
from liptriton.ops.multiclass_hkr import multiclass_hkr, multiclass_hkr_reference
from liptriton.ops.power_iteration import power_iteration, power_iteration_reference, spectral_sigma

__all__ = [
    "bjorck",
    "bjorck_coefficients",
    "bjorck_eigh",
    "bjorck_gram",
    "bjorck_gram_reference",
    "bjorck_gram_vjp_reference",
    "bjorck_reference",
    "bjorck_vjp_reference",
    "eigh_pays",
    "frobenius_normalize",
    "frobenius_normalize_reference",
    "full_sort",
    "gram_pays",
    "group_sort",
    "group_sort_reference",
    "householder_product",
    "householder_product_reference",
    "max_min",
    "max_min_reference",
    "multiclass_hkr",
    "multiclass_hkr_reference",
    "power_iteration",
    "power_iteration_reference",
    "spectral_sigma",
]


def __getattr__(name: str):
    """Deprecated names: ``gram_spectral_bound`` is :func:`liptriton.bounds.gram_bound.gram_spectral_bound`."""
    if name == "gram_spectral_bound":
        import warnings

        from liptriton.bounds.gram_bound import gram_spectral_bound

        warnings.warn("liptriton.ops.gram_spectral_bound is deprecated: use "
                      "liptriton.bounds.gram_bound.gram_spectral_bound", DeprecationWarning, stacklevel=2)
        return gram_spectral_bound
    raise AttributeError(f"module 'liptriton.ops' has no attribute {name!r}")
