"""deel-torchlip's ``torchlip.normalizers``: Björck and spectral normalization of a tensor, as functions.

These are the standalone functions (deel-torchlip documents them as "mostly for internal use"):
the same iterations, stopping rules, defaults and results as deel-torchlip 1.0.5. liptriton's
layers do not use them: they use the parametrizations of :mod:`liptriton.parametrizations`
(fixed iteration counts, so that ``torch.compile`` sees one graph; a guaranteed bound).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_BJORK_DETACH",
    "DEFAULT_EPS_BJORCK",
    "DEFAULT_EPS_SPECTRAL",
    "DEFAULT_MAXITER_BJORCK",
    "DEFAULT_MAXITER_SPECTRAL",
    "bjorck_normalization",
    "spectral_normalization",
]

DEFAULT_EPS_SPECTRAL = 1e-3
DEFAULT_EPS_BJORCK = 1e-3
DEFAULT_MAXITER_BJORCK = 15
DEFAULT_MAXITER_SPECTRAL = 10
DEFAULT_BETA = 0.5
DEFAULT_BJORK_DETACH = 4  # Björck steps after the 4th pass no gradient through ``W W^T W``


def bjorck_normalization(w: Tensor, eps: float = DEFAULT_EPS_BJORCK, beta: float = DEFAULT_BETA,
                         maxiter: int = DEFAULT_MAXITER_BJORCK) -> Tensor:
    r"""Orthonormalize ``w`` (viewed as ``(C, -1)``) by Björck iterations.

    ``W_{n+1} = (1 + beta) W_n - beta W_n W_n^T W_n`` until ``||W_{n+1} - W_n||_F < eps`` or
    ``maxiter`` steps; as in deel-torchlip, the cubic term of the steps after the first
    ``DEFAULT_BJORK_DETACH`` is detached from the autograd graph.

    Args:
        w: the weight, shape ``(C, *)``; its largest singular value should be at most about 1.
        eps: stopping tolerance on the Frobenius norm of one step's change.
        beta: the Björck coefficient, in ``(0, 0.5]``.
        maxiter: the largest number of steps.

    Returns:
        The orthonormalized weight, shape of ``w``.

    Examples:
        >>> w = torch.nn.init.orthogonal_(torch.empty(4, 6)) * 0.9
        >>> torch.linalg.svdvals(bjorck_normalization(w)).min() > 0.999
        tensor(True)
    """
    shape = w.shape
    w_mat = w.reshape(w.size(0), -1)
    if w_mat.shape[0] > w_mat.shape[1]:
        def cubic(m: Tensor) -> Tensor:
            return m @ (m.t() @ m)
    else:
        def cubic(m: Tensor) -> Tensor:
            return (m @ m.t()) @ m
    remaining = maxiter
    while True:
        old = w_mat
        term = cubic(w_mat)
        if maxiter - remaining >= DEFAULT_BJORK_DETACH:
            term = term.detach()
        w_mat = (1.0 + beta) * w_mat - beta * term
        remaining -= 1
        if torch.linalg.norm(w_mat - old) < eps or remaining <= 0:
            break
    return w_mat.reshape(shape)


def _power_iteration(kernel: Tensor, u: Tensor, eps: float, maxiter: int) -> Tensor:
    remaining = maxiter
    while True:
        old = u
        u = F.normalize((u @ kernel.t()) @ kernel, dim=-1)
        remaining -= 1
        if torch.linalg.norm(u - old) < eps or remaining <= 0:
            return u


def spectral_normalization(kernel: Tensor, u: Tensor | None = None, eps: float = DEFAULT_EPS_SPECTRAL,
                           maxiter: int = DEFAULT_MAXITER_SPECTRAL) -> tuple[Tensor, Tensor, Tensor]:
    """Divide a 2-D ``kernel`` by ``sigma + eps``, ``sigma`` its largest singular value by power iteration.

    Args:
        kernel: the 2-D weight ``(out, in)``.
        u: the starting right singular vector, shape ``(1, in)``; None: drawn from a normal
            distribution (torch's global generator, as deel-torchlip) and twice ``maxiter`` steps.
        eps: stopping tolerance on the change of ``u``; also added to ``sigma`` so that the
            normalized kernel stays below 1 when the estimate is slightly low.
        maxiter: the largest number of power-iteration steps.

    Returns:
        ``(kernel / (sigma + eps), u, sigma)``.

    Examples:
        >>> w, u, sigma = spectral_normalization(torch.diag(torch.tensor([3.0, 1.0])))
        >>> round(float(sigma), 3)
        3.0
    """
    if u is None:
        maxiter *= 2
        u = torch.ones((1, kernel.flatten(start_dim=1).shape[-1]), device=kernel.device)
        torch.nn.init.normal_(u)
    u = _power_iteration(kernel, u, eps, maxiter)
    sigma = torch.linalg.norm(u @ kernel.t())
    return kernel.div(sigma + eps), u, sigma
