"""Top Ritz vectors of a batch of symmetric or Hermitian matrices by Lanczos (the certificate's
estimate on CUDA and in converging calls; :mod:`liptriton.bounds.certified_norm`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from liptriton.bounds._gram_ops import apply as _apply
from liptriton.bounds._gram_ops import dot as _dot
from liptriton.bounds._gram_ops import generic as _generic

__all__ = ["lanczos_top"]


def lanczos_top(h: Tensor, v: Tensor, steps: int) -> Tensor:
    """Top Ritz vectors (batch, q) of ``h`` (batch, q, q, symmetric or Hermitian) in the Krylov
    space of ``v`` of dimension ``min(steps, q)`` (full reorthogonalization, then Rayleigh-Ritz on
    the projected matrix ``Q^H h Q``; no eigensolver: the small matrix's top eigenvector comes from
    its 4096th power, so nothing synchronizes with the host).

    Examples:
        >>> h = torch.diag_embed(torch.tensor([[1.0, 3.0, 2.0]], dtype=torch.float64))
        >>> lanczos_top(h, torch.ones(1, 3, dtype=torch.float64), 3).abs().round(decimals=6)
        tensor([[0., 1., 0.]], dtype=torch.float64)
    """
    k = min(steps, h.shape[-1])
    q = F.normalize(v, dim=-1, eps=1e-300)
    if k <= 1:  # the Krylov space is v itself (powering a 1 x 1 matrix would also fuse 12
        return q  # squarings of one scalar into one expression under Inductor)
    basis, images, alphas = [q], [], []
    for j in range(k):
        w = _apply(h, basis[-1])
        images.append(w)
        if j + 1 == k:
            break
        alphas.append(_dot(basis[-1], w).abs())
        scale = torch.stack(alphas, -1).amax(-1)
        # Breakdown (the Krylov space is invariant: a degenerate spectrum, or a warm vector with no
        # component on the top eigenvectors) leaves only rounding noise after the
        # orthogonalization. A fixed generic vector, added at 1e-6 of the scale before it, is then
        # what remains: the next basis vector, so that every direction, the top one included,
        # enters the space again. Otherwise it tilts the space by 1e-6, which Rayleigh-Ritz on the
        # exact projection absorbs (and the proof never relies on the vector).
        generic = _generic(w.shape[-1], j + 1.6180339887, w)
        w = w + (1e-6 * scale).unsqueeze(-1).to(w.dtype) * generic
        qs = torch.stack(basis, -1)  # (batch, q, j + 1)
        for _ in range(2):  # twice is enough (Kahan)
            w = w - (qs @ (qs.mH @ w.unsqueeze(-1))).squeeze(-1)
        basis.append(F.normalize(w, dim=-1, eps=1e-300))
    qs = torch.stack(basis, -1)
    t = qs.mH @ torch.stack(images, -1)  # (batch, k, k): Q^H h Q
    t = (t + t.mH) / 2
    for _ in range(12):  # t^4096, rescaled: its columns point to the top eigenvector
        t = t / torch.linalg.matrix_norm(t).clamp_min(1e-300)[..., None, None]
        t = t @ t
    y = F.normalize(t.sum(-1) + t[..., 0], dim=-1, eps=1e-300)
    return F.normalize((qs @ y.unsqueeze(-1)).squeeze(-1), dim=-1, eps=1e-300)
