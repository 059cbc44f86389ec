"""deel-torchlip's ``torchlip.init``: in-place spectral and Björck initializers (deprecated there too).

Both warn, as deel-torchlip 1.0.5 does, that ``torch.nn.init.orthogonal_`` is the better choice.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from liptriton.normalizers import (
    DEFAULT_BETA,
    DEFAULT_EPS_BJORCK,
    DEFAULT_EPS_SPECTRAL,
    DEFAULT_MAXITER_BJORCK,
    DEFAULT_MAXITER_SPECTRAL,
    bjorck_normalization,
    spectral_normalization,
)

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_EPS_BJORCK",
    "DEFAULT_EPS_SPECTRAL",
    "DEFAULT_MAXITER_BJORCK",
    "DEFAULT_MAXITER_SPECTRAL",
    "bjorck_",
    "bjorck_normalization",
    "spectral_",
    "spectral_normalization",
]


def spectral_(tensor: Tensor, eps_spectral: float = DEFAULT_EPS_SPECTRAL,
              maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL) -> None:
    """Divide a 2-D ``tensor`` in place by its largest singular value (power iteration).

    Args:
        tensor: a 2-D tensor.
        eps_spectral: stopping tolerance of the power iteration.
        maxiter_spectral: the largest number of power-iteration steps (doubled: random start).

    Returns:
        None (``tensor`` is modified).

    Examples:
        >>> import warnings
        >>> w = torch.randn(5, 3)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     spectral_(w)
        >>> bool(torch.linalg.matrix_norm(w, 2) <= 1.0)
        True
    """
    warnings.warn("spectral_ initialization is deprecated, use torch.nn.init.orthogonal_ instead",
                  stacklevel=2)
    with torch.no_grad():
        tensor.copy_(spectral_normalization(tensor, None, eps=eps_spectral, maxiter=maxiter_spectral)[0])


def bjorck_(tensor: Tensor, eps_spectral: float = DEFAULT_EPS_SPECTRAL,
            maxiter_spectral: int = DEFAULT_MAXITER_SPECTRAL, eps_bjorck: float = DEFAULT_EPS_BJORCK,
            maxiter_bjorck: int = DEFAULT_MAXITER_BJORCK, beta: float = DEFAULT_BETA) -> None:
    """Orthonormalize a 2-D ``tensor`` in place: spectral normalization, then Björck iterations.

    Args:
        tensor: a 2-D tensor.
        eps_spectral: stopping tolerance of the power iteration.
        maxiter_spectral: the largest number of power-iteration steps (doubled: random start).
        eps_bjorck: stopping tolerance of the Björck iterations.
        maxiter_bjorck: the largest number of Björck steps.
        beta: the Björck coefficient.

    Returns:
        None (``tensor`` is modified).

    Examples:
        >>> import warnings
        >>> w = torch.randn(3, 5)
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     bjorck_(w)
        >>> bool(torch.linalg.svdvals(w).min() > 0.99)
        True
    """
    warnings.warn("bjorck_ initialization is deprecated, use torch.nn.init.orthogonal_ instead", stacklevel=2)
    with torch.no_grad():
        w = spectral_normalization(tensor, None, eps=eps_spectral, maxiter=maxiter_spectral)[0]
        tensor.copy_(bjorck_normalization(w, eps=eps_bjorck, beta=beta, maxiter=maxiter_bjorck))
