"""The certificate's CPU paths through LAPACK's eigensolver (see
:mod:`liptriton.bounds.certified_norm` for the proof and for the Lanczos path that CUDA and
``torch.compile`` take).

``eigvalsh`` gives a matrix's top eigenvalue outright (float64: exact to ``~side * 1e-16``
relative, far inside the tightest level ``1 + 1e-6``); one batched Cholesky factorization of
``mu I - H_i`` for every matrix at that level proves the bound; inverse iteration with the factor
converges the top matrix's vector (the gradient's). Cheaper on a CPU than the Lanczos path's
hundreds of small operations and its retest factorizations, and tight at every step.

- :func:`certify_direct`: every matrix's eigenvalues (a small batch).
- :func:`certify_ranked`: a large batch, eagerly. The matrices are ranked by the Rayleigh
  quotients of their warm vectors; only the top ones go through ``eigvalsh``; every matrix is
  factored once at their level. A matrix the ranking placed too low fails its factorization
  (the factorization is the proof: a missed matrix can cost time, never soundness); only the
  failed ones go through ``eigvalsh`` and are factored again at the raised level (a matrix that
  passed a lower level passes a higher one). One host synchronization per round.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from liptriton.bounds._gram_ops import MARGIN, apply, dot, factorize, frobenius, generic, solve

__all__ = ["certify_direct", "certify_ranked", "prove_level"]

_ROUNDS = 4  # rounds for matrices the ranking missed before the Frobenius fallback


def certify_direct(h: Tensor, v: Tensor, levels: tuple[float, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """Every matrix's top eigenvalue by ``eigvalsh``, the proof at the tightest level, two
    inverse-iteration steps on the top matrix (the other vectors are kept). A matrix that fails
    the test (non-finite, or an eigensolver far off) contributes its Frobenius norm: always valid,
    and non-finite for a non-finite matrix.

    Args:
        h: positive semi-definite matrices (batch, q, q), float64 or complex128.
        v: vectors (batch, q).
        levels: relative levels on ``sqrt(lambda)``; only the tightest is used.

    Returns:
        ``(bound, v, index)`` as :func:`liptriton.bounds.certified_norm.certify_top_eigenvalue`'s
        with ``index=True``: ``index`` is the matrix with the largest top eigenvalue (0-d).

    Examples:
        >>> a = torch.randn(3, 5, 4, dtype=torch.float64)
        >>> h = a.mT @ a
        >>> bound, _, _ = certify_direct(h, torch.randn(3, 4, dtype=torch.float64), (1 + 1e-6,))
        >>> top = torch.linalg.eigvalsh(h).max()
        >>> bool(top <= bound <= top * (1 + 3e-6))
        True
    """
    fro = frobenius(h)
    finite = torch.isfinite(fro)  # a non-finite matrix has a non-finite norm: it propagates below
    lams = torch.linalg.eigvalsh(torch.where(finite[:, None, None], h, 0))[..., -1].clamp_min(0)
    i = lams.argmax().reshape(1)
    mu = lams.index_select(0, i).squeeze(0) * (levels[0] ** 2) * (1 + MARGIN) + 1e-300
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    factor, info = factorize(mu * eye - h)
    ok = (info == 0) & finite
    each = torch.where(ok, mu, fro)
    top = torch.where(ok.index_select(0, i)[:, None, None], factor.index_select(0, i), eye)
    v = v.to(h.dtype)
    vt = _inverse_steps(h, v.index_select(0, i), top, 2)
    return each.max() * (1 + MARGIN), F.normalize(v, dim=-1, eps=1e-300).index_copy(0, i, vt), i.reshape(())


def certify_ranked(h: Tensor, v: Tensor, levels: tuple[float, ...], top: int
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Eager CPU certificate of a large batch: ``eigvalsh`` on the ``top`` matrices ranked by
    their warm vectors' Rayleigh quotients, one factorization of every matrix at their level,
    ``eigvalsh`` and a new factorization for the matrices that failed it (a few rounds; a matrix
    still failing then contributes its Frobenius norm). Every vector takes a power step (the
    ranking of the next call improves); the top matrices' vectors one inverse-iteration step, the
    largest one two.

    Args:
        h: positive semi-definite matrices (batch, q, q), float64 or complex128.
        v: warm vectors (batch, q).
        levels: relative levels on ``sqrt(lambda)``; only the tightest is used.
        top: how many matrices go through ``eigvalsh`` first.

    Returns:
        ``(bound, v, index)`` as :func:`liptriton.bounds.certified_norm.certify_top_eigenvalue`'s
        with ``index=True`` (the bound non-finite for a non-finite matrix); ``index`` is the
        candidate whose refined vector has the largest Rayleigh quotient (0-d): the top matrix,
        or one that passed the same level (within the level of it).

    Examples:
        >>> a = torch.randn(40, 6, 5, dtype=torch.float64)
        >>> h = a.mT @ a
        >>> bound, _, _ = certify_ranked(h, torch.randn(40, 5, dtype=torch.float64), (1 + 1e-6,), 4)
        >>> top = torch.linalg.eigvalsh(h).max()
        >>> bool(top <= bound <= top * (1 + 3e-6))
        True
    """
    v = F.normalize(v.to(h.dtype), dim=-1, eps=1e-300)
    hv = apply(h, v)
    ritz = dot(v, hv).nan_to_num(float("inf"))  # a broken matrix first: it is looked at
    # the power step, from a vector with a share of a generic one (a top direction the warm vector
    # lost comes back)
    v = F.normalize(hv + 0.1 * ritz.abs().clamp_max(1e300)[:, None].to(h.dtype)
                    * generic(h.shape[-1], 1.6180339887, h), dim=-1, eps=1e-300)
    idx = ritz.topk(min(top, h.shape[0])).indices
    sub = h.index_select(0, idx)
    fro = frobenius(sub)
    if not bool(torch.isfinite(fro).all()):
        return fro.max(), v, idx[0]
    lam = torch.linalg.eigvalsh(sub)[..., -1].max().clamp_min(0)

    def exact(missed: Tensor) -> Tensor:  # the failed matrices' top eigenvalue (non-finite: NaN)
        sub = h.index_select(0, missed)
        finite = torch.isfinite(frobenius(sub))
        top = torch.linalg.eigvalsh(torch.where(finite[:, None, None], sub, 0))[..., -1].max()
        return torch.where(finite.all(), top, torch.nan)

    mu, factor, info, missed = prove_level(h, lam, levels[0], exact)
    idx = torch.cat([idx, missed])
    ok = info == 0
    each = torch.where(ok, mu, frobenius(h) if not bool(ok.all()) else mu)  # a NaN matrix: a NaN bound
    # vectors: the candidates one inverse-iteration step with their proving factors, the top one two
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    fac = torch.where(ok.index_select(0, idx)[:, None, None], factor.index_select(0, idx), eye)
    vi = _inverse_steps(h, v.index_select(0, idx), fac, 1)
    first = dot(vi, apply(h.index_select(0, idx), vi)).argmax().reshape(1)
    vi = vi.index_copy(0, first, _inverse_steps(h, vi.index_select(0, first), fac.index_select(0, first), 1))
    return each.max() * (1 + MARGIN), v.index_copy(0, idx, vi), idx.index_select(0, first).reshape(())


def prove_level(h: Tensor, lam: Tensor, level: float, refine: Callable[[Tensor], Tensor],
                rounds: int = _ROUNDS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Factor ``mu I - h_i`` for every matrix at ``mu = level^2 lam`` (plus the rounding margin);
    the matrices that fail (their top eigenvalue is above ``mu``: ranked too low) get a new
    estimate from ``refine(indices)``, ``mu`` is raised to it and only they are factored again (a
    matrix that passed a lower level passes a higher one), for at most ``rounds`` rounds (one host
    synchronization each).

    Args:
        h: positive semi-definite matrices (batch, q, q).
        lam: the estimate of their largest eigenvalue (0-d, from below).
        level: the relative level on ``sqrt(lambda)``.
        refine: indices of failed matrices -> an estimate of their largest eigenvalue (0-d; NaN
            for a non-finite matrix, which then fails every round).
        rounds: rounds of refining the failed matrices.

    Returns:
        ``(mu, factor, info, refined)``: the final level, the factors (valid where ``info == 0``),
        LAPACK's info per matrix (nonzero: not proven at ``mu``), and the indices refined.

    Examples:
        >>> h = torch.diag_embed(torch.tensor([[1.0, 2.0], [3.0, 0.5]], dtype=torch.float64))
        >>> mu, _, info, refined = prove_level(h, torch.tensor(2.0, dtype=torch.float64), 1.0,
        ...                                    lambda i: torch.tensor(3.0, dtype=torch.float64))
        >>> round(float(mu), 6), info.tolist(), refined.tolist()
        (3.0, [0, 0], [1])
    """
    scale = level**2 * (1 + MARGIN)
    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    mu = lam * scale + 1e-300
    factor, info = factorize(mu * eye - h)
    refined = [torch.zeros(0, dtype=torch.long, device=h.device)]
    for _ in range(rounds):
        missed = (info != 0).nonzero().flatten()
        if missed.numel() == 0:
            break
        lam = torch.maximum(lam, refine(missed))
        mu = lam * scale + 1e-300
        again, again_info = factorize(mu * eye - h.index_select(0, missed))
        factor, info = factor.index_copy(0, missed, again), info.index_copy(0, missed, again_info)
        refined.append(missed)
    return mu, factor, info, torch.cat(refined)


def _inverse_steps(h: Tensor, v: Tensor, factor: Tensor, steps: int) -> Tensor:
    """``steps`` inverse-iteration steps ``v <- (mu I - h)^-1 v`` with the Cholesky factors of
    ``mu I - h`` (batch of the vectors'), from ``v`` plus a share of a generic vector."""
    v = F.normalize(v, dim=-1, eps=1e-300) + 0.1 * generic(h.shape[-1], 1.6180339887, h)
    for _ in range(steps):
        v = F.normalize(solve(v, factor), dim=-1, eps=1e-300)
    return v
