"""A certified upper bound of the largest singular value of a batch of matrices, tight and cheap
enough to recompute at every training step.

For matrices ``B_i`` (the reshaped weight, or the frequency blocks of a convolution), let
``H_i = B_i^T B_i``. A few Lanczos steps on ``H_i`` from the previous step's vector give
``lam_hat = max_i`` (top Ritz value), an estimate of ``max_i sigma_max(B_i)^2`` from below that,
unlike plain power iteration, keeps up when the optimizer flattens the top of the spectrum (a
Krylov space of dimension 8 converges like Chebyshev, not like ``(lambda_2 / lambda_1)^k``).
It becomes a proof with one Cholesky
factorization per matrix: if ``mu I - H_i`` factors for every i, it is positive definite, so
every eigenvalue of every ``H_i`` is below ``mu``. The test runs at ``mu = (c lam_hat)`` for a
few levels ``c`` (``1 + 1e-6`` first, which a converged estimate passes; in training usually
``1 + 1e-3``: the bound is then within 0.1% of the estimate); when the
optimizer outran the iteration and no level passes, the Frobenius bound
``lambda_max(H) <= ||H||_F`` (always valid, looser; ``trace(H)`` for a matrix beyond the few
retested ones) is used for that step.

The matrices may be real symmetric or complex Hermitian (a convolution's frequency blocks: half
the side and half the factorization cost of their real embedding). Everything here runs in
float64 (complex128) under ``no_grad``: the Gram products' and the factorization's
rounding (relative ``~dim * 1e-16``) is covered by an explicit margin. Plain matmuls and a
batched Cholesky (cuSOLVER / LAPACK): no Triton kernel.

On a CPU the estimate comes from LAPACK's eigensolver instead of Lanczos where that is cheaper
(:mod:`liptriton.bounds.certified_direct`; :func:`_path` decides): the proof is the same
factorization, at ``1 + 1e-6``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from liptriton.bounds._gram_ops import MARGIN as _MARGIN
from liptriton.bounds._gram_ops import apply as _apply
from liptriton.bounds._gram_ops import dot as _dot
from liptriton.bounds._gram_ops import factorize as _factorize
from liptriton.bounds._gram_ops import frobenius as _frobenius
from liptriton.bounds._gram_ops import generic as _generic
from liptriton.bounds._gram_ops import solve as _solve
from liptriton.bounds.certified_direct import certify_direct, certify_ranked, prove_level
from liptriton.bounds.certified_divisor import top_index
from liptriton.bounds.lanczos import lanczos_top

__all__ = ["LEVELS", "certify_top_eigenvalue", "lanczos_top"]


# Relative levels (on sigma) at which the estimate is tested, tightest first: a converged
# estimate (eval, export) is exact to float64 rounding and passes at 1e-6; in training the
# warm-started estimate is within about 1e-3.
LEVELS = (1.0 + 1e-6, 1.0 + 1e-3, 1.0 + 3e-3, 1.0 + 1e-2, 1.0 + 3e-2, 1.0 + 1e-1)
_RETEST = 4  # matrices that failed the tightest level and are refined and tested at every level
# A small CPU batch takes the direct path: LAPACK's eigvalsh gives the top eigenvalues outright,
# cheaper than the Lanczos path's hundreds of small ops and its retest factorizations. Measured
# (one thread, loaded machine, direct / Lanczos time): 1 real matrix of side 512: 0.37, side 1024:
# 0.56; 8 of side 256: 0.65; 20 complex of side 128: 0.75; 60 of side 32: 0.58, of side 64: 0.88;
# 120 of side 32: 0.83; but 420 of side 32: 1.58, 180 of side 64: 1.58, 60 of side 128: 1.39.
_DIRECT_BATCH = 32
_DIRECT_WORK = (128, 2**24)  # (batch, batch * side^3) both at most these
_RANK_STEPS = 4  # power steps of every matrix that rank a fresh batch; the matrices they rank too low fail
# the factorization at the top ones' level, and only those are then converged (ResNet-50: see perf/NOTES.md)
_MISSED_ROUNDS = 4  # rounds of converging the missed matrices before the full procedure
# Matrices the ranked path sends through eigvalsh first (at most): a matrix the ranking misses
# costs one more round (its eigvalsh and factorization), less than a dozen more eigvalsh. Measured
# (one thread, forward + backward of the certificate, against 16): network (c)'s 60 complex blocks
# of side 32 5.0-5.4 -> 4.3-4.5 ms, of side 16 2.6-2.8 -> 2.4-2.7; network (b)'s 60 of side 128
# 86-105 -> 68-77 ms, 180 of side 64 51-64 -> 46-55; 30 hostile Adam steps on Conv2d 32 -> 32 at
# 8 x 8: 8 missed rounds in 29 calls instead of 4; 12 on Conv2d 128 -> 128: 2 instead of 1.
_RANKED_TOP = 4


def _path(h: Tensor, steps: int, refine: int) -> str:
    """Which path certifies ``h`` (a decision on shapes, device and mode; no host synchronization).

    "direct" (:func:`~liptriton.bounds.certified_direct.certify_direct`) for a small CPU batch
    (at most 32 matrices; in a converging call up to 128 small ones);
    "ranked" (:func:`~liptriton.bounds.certified_direct.certify_ranked`) for a larger CPU batch
    in a warm call; else "lanczos" (CUDA, where ``eigvalsh`` synchronizes with the host;
    converging calls). A compiled CPU graph reaches this eagerly, inside the opaque op
    ``liptriton::certify_top_eigenvalue``.
    """
    if h.device.type != "cpu":
        return "lanczos"
    batch, side = h.shape[0], h.shape[-1]
    if batch <= _DIRECT_BATCH:
        return "direct"
    if steps > 0 and refine <= 1:
        return "ranked"  # measured (warm, one thread): 60 complex blocks of side 32 3.4 ms against
        # direct's 4.8, 120 of side 32 4.6 against 9.1, 60 of side 64 11.7 against 24.9
    if batch <= _DIRECT_WORK[0] and batch * side**3 <= _DIRECT_WORK[1]:
        return "direct"
    return "lanczos"


def certify_top_eigenvalue(h: Tensor, v: Tensor, steps: int,
                           levels: tuple[float, ...] = LEVELS, top: int = 16,
                           refine: int = 1, power: int = 1, index: bool = False
                           ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
    """Return a proven upper bound of ``max_i lambda_max(h_i)`` and the advanced vectors.

    Every matrix takes ``power`` power steps, and the ``top`` ones with the largest estimates
    take ``steps`` Lanczos steps. Every matrix is tested at the tightest level (one batched Cholesky);
    the (at most 4) matrices that failed it (or else have the largest estimates) are refined by
    Lanczos again and tested at every level of the refined estimate; a matrix that passes no
    level it was tested at contributes its Frobenius norm (a failing matrix beyond those 4: its
    trace; both always ``>= lambda_max``).

    Args:
        h: positive semi-definite matrices, shape (batch, q, q), real symmetric (float64) or
            complex Hermitian (complex128).
        v: warm-start vectors, shape (batch, q), of ``h``'s dtype (or real, cast).
        steps: Lanczos steps to take first (>= 0; 0 keeps ``v``).
        levels: relative levels on ``sqrt(lambda)`` to test, tightest first.
        top: how many matrices (largest estimates first) take Lanczos steps and are tested at
            the looser levels.
        refine: 1: one inverse-iteration step with the tightest level's factorization (where that
            level passed) for the next call's warm start; 2 or more: converge, that many
            inverse-iteration steps shifted just above the proven bound, then certify again (the
            converged estimate passes at ``1 + 1e-6``: the bound is then reproducible). With
            ``steps > 0``, eagerly, a fast path first (:func:`_converge_top`): only the ``top``
            matrices are converged, by Lanczos, then every matrix is tested once at the tightest
            level; the full procedure runs only when a matrix fails it (one host synchronization).
        power: power steps every matrix takes before the ``top`` are chosen (from a random
            start, a few steps rank the matrices by their top eigenvalue rather than by trace).
        index: also return the matrix whose new vector has the largest Rayleigh quotient (the
            block a divisor takes its gradient from; the CPU paths know it without another pass
            over the batch).

    On a CPU, LAPACK's eigensolver replaces Lanczos (:mod:`liptriton.bounds.certified_direct`): a
    small batch (``batch <= 32``, or ``batch <= 128`` and ``batch * q^3 <= 2^24``) by ``eigvalsh``
    of every matrix; a larger one, in a warm call (``steps > 0``, ``refine <= 1``; eager, or
    compiled through the op), by ``eigvalsh`` of at most 4 of the ``top`` matrices ranked by
    their vectors and of those whose factorization then fails. One batched Cholesky proves the level; inverse iteration gives the vectors
    (``steps``, ``refine`` and ``power`` then do not apply: the bound is at the tightest level).

    Returns:
        ``(bound, v)``: a 0-d float64 tensor ``>= max_i lambda_max(h_i)``, and the new unit
        vectors (with ``index``: ``(bound, v, i)``, ``i`` a 0-d long tensor). No host
        synchronization on the Lanczos path: levels are chosen with ``torch.where``.

    Examples:
        >>> a = torch.randn(3, 5, 4, dtype=torch.float64)
        >>> h = a.mT @ a
        >>> bound, v = certify_top_eigenvalue(h, torch.randn(3, 4, dtype=torch.float64), 8)
        >>> top = torch.linalg.eigvalsh(h).max()
        >>> bool(top <= bound <= top * 1.003)
        True
    """
    if h.device.type == "cpu" and torch.compiler.is_compiling():
        # A compiled graph calls the eager CPU certificate as one opaque op (its LAPACK paths and
        # their host synchronizations run at run time) instead of tracing Lanczos: Inductor has no
        # complex code generation, and the traced path took 1.6x the eager one (perf/NOTES.md).
        out = torch.ops.liptriton.certify_top_eigenvalue(h, v.to(h.dtype), steps, list(levels), top, refine,
                                                         power)
        return out if index else out[:2]
    path = _path(h, steps, refine)
    with torch.no_grad():
        if path == "direct":
            out = certify_direct(h, v, levels)
        elif path == "ranked":
            out = certify_ranked(h, v, levels, min(top, _RANKED_TOP))
        else:
            bound, v = _certify_lanczos(h, v, steps, levels, top, refine, power)
            out = (bound, v, top_index(h, v) if index else None)
    return out if index else out[:2]


def _certify_lanczos(h: Tensor, v: Tensor, steps: int, levels: tuple[float, ...], top: int, refine: int,
                     power: int) -> tuple[Tensor, Tensor]:
    """The Lanczos path of :func:`certify_top_eigenvalue` (CUDA, converging calls): see there."""
    with torch.no_grad():
        # Keep a share of a fixed generic vector in the warm start: a top eigenvector the previous
        # steps did not see (another group, another symmetry class overtaking the old top) then
        # has a component the Krylov space can grow, instead of one that decayed to zero.
        # (Only when iterating: with steps=0 the given, converged vector is certified as it is.)
        v = F.normalize(v.to(h.dtype), dim=-1, eps=1e-300)
        if steps > 0:
            v = v + 0.1 * _generic(h.shape[-1], 1.6180339887, h)
        batch = h.shape[0]
        top = min(top, batch)
        if refine > 1 and steps > 0 and not torch.compiler.is_compiling():  # (eager: it synchronizes)
            bound, fast, tight = _converge_top(h, v, steps, levels, top)
            if tight:
                return bound, fast
            # a matrix failed the tightest level (a missed rank, or Lanczos not converged): the full
            # procedure below, from the start
        if batch > top and steps > 0:
            # every matrix takes one power step; Lanczos refines the ones that may hold the maximum
            for _ in range(max(power, 1)):
                hv = _apply(h, v)
                v, prev = F.normalize(hv, dim=-1, eps=1e-300), v
            idx = _dot(prev, hv).topk(top).indices
            v = v.index_copy(0, idx, lanczos_top(h[idx], v[idx], steps))
        else:
            v = lanczos_top(h, v, steps)
        ritz = _dot(v, _apply(h, v)).clamp_min(0)  # (batch,)
        eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
        # lambda_max <= trace(H) (H is positive semi-definite): valid, loose, and read from the
        # diagonal only; the (tighter) Frobenius norm is computed for the retested matrices.
        trace = h.diagonal(dim1=-2, dim2=-1).real.sum(-1)
        mu = ritz.max() * (levels[0] ** 2) * (1 + _MARGIN) + 1e-300
        factor, info = _factorize(mu * eye - h)
        ok = info == 0
        if refine:
            # Inverse iteration with the shift mu > lambda_max (where the factorization exists):
            # the top eigenvector's weight grows by (mu - lambda_2) / (mu - lambda_1) per step.
            vi = _solve(v, factor)  # garbage where it failed:
            v = torch.where(ok[:, None], F.normalize(vi, dim=-1, eps=1e-300), v)  # ... not used there
        each = torch.where(ok, mu, trace)
        if len(levels) > 1:
            # The matrices that failed (their top eigenvalue was missed), then the largest estimates:
            # refine them and test them at every level of the refined estimate.
            failed_first = ritz + (~ok).to(ritz.dtype) * (ritz.max() + trace.max() + 1)
            idx = failed_first.topk(min(top, _RETEST)).indices
            sub = h[idx]
            vs = lanczos_top(sub, v[idx], max(steps, 1))
            v = v.index_copy(0, idx, vs)
            lam = torch.maximum(ritz.max(), _dot(vs, _apply(sub, vs)).max())
            # every level at once: one batched factorization of (levels x retested) matrices
            mus = lam * torch.tensor([c * c for c in levels], dtype=lam.dtype, device=h.device) * (1 + _MARGIN) + 1e-300
            passed = _factorize(mus[:, None, None, None] * eye - sub)[1] == 0  # (levels, n)
            fro = torch.minimum(_frobenius(sub), trace[idx])  # lambda_max <= ||H||_F
            best = torch.where(passed, mus[:, None].expand_as(passed), fro.expand_as(passed)).amin(0)
            best = torch.minimum(best, fro)
            each = each.scatter(0, idx, torch.where(ok[idx], each[idx], best))
        bound = each.max() * (1 + _MARGIN)
        if refine > 1:
            # Converging: inverse iteration with a shift just above the proven bound (so the
            # factorization exists), then certify the refined estimate, which passes at 1e-6.
            shift = bound * (1 + 1e-9)
            factor, info = _factorize(shift * eye - h)
            good = (info == 0)[:, None]
            factor = torch.where(good[..., None], factor, eye)
            for _ in range(refine):
                vi = _solve(v, factor)
                v = torch.where(good, F.normalize(vi, dim=-1, eps=1e-300), v)
            again, v = certify_top_eigenvalue(h, v, 0, levels, top, refine=0)
            bound = torch.minimum(bound, again)
        return bound, v


def _converge_top(h: Tensor, v: Tensor, steps: int, levels: tuple[float, ...], top: int
                  ) -> tuple[Tensor, Tensor, bool]:
    """The fast path of a converging call: rank every matrix by a few power steps, converge the
    ``top`` ones by ``steps`` Lanczos steps, then test every matrix once at the tightest level of
    that estimate (one factorization of the batch; the full procedure takes three, plus the
    retests at every level). A matrix the ranking missed fails that test (its top eigenvalue is
    above the level): only those are converged by Lanczos and tested again at the raised level
    (the others passed a lower one, so they pass it too), for a few rounds.

    Returns:
        ``(bound, v, tight)``: a proven bound (infinite when not tight) and the vectors as
        :func:`certify_top_eigenvalue`'s, and whether every matrix passed the tightest level of
        the final estimate (a host synchronization per round; when not, the caller runs the full
        procedure).
    """
    if h.shape[0] > top:
        for _ in range(_RANK_STEPS):  # power steps over the whole batch: a memory-bound pass each
            v = F.normalize(_apply(h, v), dim=-1, eps=1e-300)
        idx = _dot(v, _apply(h, v)).topk(top).indices
        v = v.index_copy(0, idx, lanczos_top(h[idx], v[idx], steps))
    else:
        v = lanczos_top(h, v, steps)
    lam = _dot(v, _apply(h, v)).clamp_min(0).max()

    def refine(missed: Tensor) -> Tensor:  # the missed matrices converged by Lanczos
        nonlocal v
        vs = lanczos_top(h[missed], v[missed], max(steps, _RANK_STEPS))
        v = v.index_copy(0, missed, vs)
        return _dot(vs, _apply(h[missed], vs)).clamp_min(0).max()

    mu, factor, info, _ = prove_level(h, lam, levels[0], refine, _MISSED_ROUNDS)
    if bool((info != 0).any()):  # no proof at this level: nothing certified here
        return torch.full_like(mu, float("inf")), v, False
    # one inverse-iteration step with the proving factors of the top matrices: the next call's
    # warm start (the others' vectors come from the ranking; a solve costs several matrix passes)
    idx = _dot(v, _apply(h, v)).topk(min(top, h.shape[0])).indices
    vi = _solve(v[idx], factor[idx])
    v = F.normalize(v, dim=-1, eps=1e-300).index_copy(0, idx, F.normalize(vi, dim=-1, eps=1e-300))
    return mu * (1 + _MARGIN), v, True


@torch.library.custom_op("liptriton::certify_top_eigenvalue", mutates_args=(), device_types="cpu")
def _certify_op(h: Tensor, v: Tensor, steps: int, levels: list[float], top: int, refine: int,
                power: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`certify_top_eigenvalue` (with ``index=True``) as one CPU op for compiled graphs (runs
    eagerly inside)."""
    bound, out, i = certify_top_eigenvalue(h, v, steps, tuple(levels), top, refine, power, index=True)
    # new tensors (an op's outputs must not alias its inputs), contiguous as the fake ones
    return bound.clone(), out.clone(memory_format=torch.contiguous_format), i.clone()


@_certify_op.register_fake
def _(h: Tensor, v: Tensor, steps: int, levels: list[float], top: int, refine: int,
      power: int) -> tuple[Tensor, Tensor, Tensor]:
    return (h.new_empty((), dtype=h.real.dtype), v.new_empty(v.shape, dtype=h.dtype),
            h.new_empty((), dtype=torch.long))
