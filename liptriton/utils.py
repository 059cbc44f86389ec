"""deel-torchlip's ``torchlip.utils`` functions, on liptriton's parametrizations.

``bjorck_norm``, ``frobenius_norm`` and ``lconv_norm`` register liptriton parametrizations
(compile-friendly, fixed iteration counts); the ``remove_*`` functions bake them into the
plain weight; ``evaluate_lip_const`` measures a model's Lipschitz constant at sample points
(deel-torchlip's three estimates); ``sqrt_with_gradeps`` is a square root with a finite gradient at 0.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from liptriton._bake import bake_in_place
from liptriton._evaluate import evaluate_lip_const
from liptriton.functional.sqrt_with_gradeps import sqrt_with_gradeps
from liptriton.parametrizations import bjorck, frobenius, spectral

__all__ = [
    "bjorck_norm",
    "evaluate_lip_const",
    "frobenius_norm",
    "lconv_norm",
    "remove_bjorck_norm",
    "remove_frobenius_norm",
    "remove_lconv_norm",
    "sqrt_with_gradeps",
]


def _drop_hook_spectral_norm(module: nn.Module, name: str) -> None:
    """Remove torch's hook-based ``torch.nn.utils.spectral_norm`` (liptriton.bjorck normalizes
    the spectral norm itself, as a parametrization that compiles)."""
    if hasattr(module, name + "_orig"):
        nn.utils.remove_spectral_norm(module, name)


def bjorck_norm(module: nn.Module, name: str = "weight", eps: float = 1e-3) -> nn.Module:
    """Orthonormalize ``module.<name>`` with Björck iterations (spectral pre-normalization included).

    As deel-torchlip's ``utils.bjorck_norm``. A hook-based ``torch.nn.utils.spectral_norm``
    registered before (deel-torchlip's usage example) is replaced, since
    :func:`liptriton.bjorck` normalizes the spectral norm itself.

    Args:
        module: the layer.
        name: the weight's name.
        eps: accepted for compatibility (> 0): liptriton runs a fixed number of Björck steps
            (15), never a data-dependent loop, so that torch.compile sees one graph.

    Returns:
        ``module``.

    Examples:
        >>> import torch
        >>> m = bjorck_norm(torch.nn.utils.spectral_norm(torch.nn.Linear(16, 32)))
        >>> bool(torch.linalg.svdvals(m.weight.detach()).min() > 0.99)
        True
    """
    if not eps > 0:
        raise ValueError(f"bjorck_norm: eps must be > 0, got {eps!r}")
    _drop_hook_spectral_norm(module, name)
    return bjorck(module, name)


def frobenius_norm(module: nn.Module, name: str = "weight", disjoint_neurons: bool = True) -> nn.Module:
    """Normalize ``module.<name>`` by its Frobenius norm (per output neuron by default).

    Args:
        module: the layer.
        name: the weight's name.
        disjoint_neurons: normalize each output neuron separately.

    Returns:
        ``module``.

    Examples:
        >>> import torch
        >>> round(float(frobenius_norm(torch.nn.Linear(4, 1)).weight.norm()), 4)
        1.0
    """
    return frobenius(module, name, disjoint_neurons=disjoint_neurons)


def lconv_norm(module: nn.Conv1d | nn.Conv2d, name: str = "weight") -> nn.Conv1d | nn.Conv2d:
    """Divide a convolution's kernel by the norm of its convolution operator.

    deel-torchlip divides by a loose bound, ``sqrt(ceil(kh / sh) ceil(kw / sw))``; liptriton
    divides by the operator norm itself (stride, padding and dilation included), tracked by
    power iteration, so the convolution is exactly 1-Lipschitz rather than about 0.65.

    Args:
        module: a convolution layer.
        name: the weight's name.

    Returns:
        ``module``.

    Examples:
        >>> import torch
        >>> conv = lconv_norm(torch.nn.Conv2d(2, 4, 3, padding=1))
        >>> conv(torch.randn(1, 2, 8, 8)).shape
        torch.Size([1, 4, 8, 8])
    """
    if not isinstance(module, nn.modules.conv._ConvNd):
        raise ValueError(f"lconv_norm: expected a convolution layer, got {type(module).__name__}")
    return spectral(module, name)


def _remove(fn: str, module: nn.Module, name: str) -> nn.Module:
    if not parametrize.is_parametrized(module, name):
        raise ValueError(f"{fn}: {type(module).__name__}.{name} has no parametrization to remove")
    return bake_in_place(module, (name,))


def remove_bjorck_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake the Björck normalization of ``module.<name>`` into a plain weight.

    Args:
        module: the layer.
        name: the weight's name.

    Returns:
        ``module``, with a plain parameter holding the orthonormalized weight.

    Examples:
        >>> import torch
        >>> m = remove_bjorck_norm(bjorck_norm(torch.nn.Linear(4, 4)))
        >>> parametrize.is_parametrized(m)
        False
    """
    return _remove("remove_bjorck_norm", module, name)


def remove_frobenius_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake the Frobenius normalization of ``module.<name>`` into a plain weight.

    Args:
        module: the layer.
        name: the weight's name.

    Returns:
        ``module``.

    Examples:
        >>> import torch
        >>> m = remove_frobenius_norm(frobenius_norm(torch.nn.Linear(4, 1)))
        >>> parametrize.is_parametrized(m)
        False
    """
    return _remove("remove_frobenius_norm", module, name)


def remove_lconv_norm(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake the operator-norm normalization of a convolution into a plain weight.

    Args:
        module: the convolution.
        name: the weight's name.

    Returns:
        ``module``.

    Examples:
        >>> import torch
        >>> conv = lconv_norm(torch.nn.Conv1d(1, 2, 3))
        >>> _ = conv(torch.randn(1, 1, 8))
        >>> parametrize.is_parametrized(remove_lconv_norm(conv))
        False
    """
    return _remove("remove_lconv_norm", module, name)
