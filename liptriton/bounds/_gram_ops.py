"""Small batched operations on Gram matrices shared by the certificate's paths
(:mod:`liptriton.bounds.certified_norm`, :mod:`liptriton.bounds.certified_direct`,
:mod:`liptriton.bounds.certified_divisor`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["MARGIN", "apply", "dot", "factorize", "frobenius", "generic", "solve"]

MARGIN = 1e-9  # float64 rounding of the Gram product and of the Cholesky factorization


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Real part of the batched inner product ``<a, b>`` over the last dimension.

    Examples:
        >>> float(dot(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])))
        11.0
    """
    d = torch.linalg.vecdot(a, b)  # sum(conj(a) * b): one op
    return d.real if d.is_complex() else d


def apply(h: Tensor, v: Tensor) -> Tensor:
    """``h_i v_i`` for a batch of matrices (batch, q, q) and vectors (batch, q).

    Examples:
        >>> apply(2 * torch.eye(2).expand(3, 2, 2), torch.ones(3, 2)).shape
        torch.Size([3, 2])
    """
    return torch.bmm(h, v.unsqueeze(-1)).squeeze(-1)  # (bmm: fewer ops than matmul's broadcasting)


def factorize(a: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factors ``a_i = U_i^H U_i`` of a batch of Hermitian matrices and LAPACK's info
    (0 where ``a_i`` is positive definite: the certificate's proof). The upper factor: on a CPU
    torch copies the input's triangle into the factor 20-27 % faster than the lower one for
    complex matrices (480 complex128 blocks of side 32: 3.3 against 4.4 ms; real: equal).

    Examples:
        >>> u, info = factorize(4 * torch.eye(2, dtype=torch.float64)[None])
        >>> u[0, 0, 0].item(), info.tolist()
        (2.0, [0])
    """
    return torch.linalg.cholesky_ex(a, upper=True)


def solve(v: Tensor, u: Tensor) -> Tensor:
    """``a_i^-1 v_i`` from the factors ``u`` of :func:`factorize` (batch of vectors (batch, q)).

    Examples:
        >>> u, _ = factorize(4 * torch.eye(2, dtype=torch.float64)[None])
        >>> solve(torch.ones(1, 2, dtype=torch.float64), u).tolist()
        [[0.25, 0.25]]
    """
    return torch.cholesky_solve(v.unsqueeze(-1), u, upper=True).squeeze(-1)


def frobenius(h: Tensor) -> Tensor:
    """``||h_i||_F`` (batch,): one pass over the real view (``matrix_norm`` of a complex batch is
    several times slower).

    Examples:
        >>> float(frobenius(torch.eye(4, dtype=torch.float64)[None]))
        2.0
    """
    r = torch.view_as_real(h).flatten(-2) if h.is_complex() else h
    return r.square().sum((-2, -1)).sqrt()


def generic(n: int, j: float, like: Tensor) -> Tensor:
    """A fixed unit vector of length ``n`` with a component on every direction (no host
    randomness), of ``like``'s dtype and device: ``cos(k j)`` for k = 1 .. n, normalized. Eagerly
    it is built once per (n, j, dtype, device) and reused (the certificate takes it several times
    per training step; callers never modify it).

    Examples:
        >>> v = generic(3, 1.0, torch.zeros(1, dtype=torch.float64))
        >>> v.shape, round(float(v.norm()), 12)
        (torch.Size([3]), 1.0)
    """
    key = (n, j, like.dtype, like.device)
    compiling = torch.compiler.is_compiling() or torch.is_inference_mode_enabled()  # (no inference tensor kept)
    if not compiling and key in _GENERIC:
        return _GENERIC[key]
    real = like.real.dtype if like.is_complex() else like.dtype
    v = torch.cos(torch.arange(1, n + 1, dtype=real, device=like.device) * j)
    v = (v / v.norm().clamp_min(1e-300)).to(like.dtype)
    if not compiling:
        if len(_GENERIC) >= 256:
            _GENERIC.clear()
        _GENERIC[key] = v
    return v


_GENERIC: dict[tuple, Tensor] = {}
