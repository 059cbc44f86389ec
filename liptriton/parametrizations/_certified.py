"""Certified norm states: the divisor of a parametrization is a proven upper bound of the norm of
the operator the layer applies, recomputed at every training forward (see
:mod:`liptriton.bounds.certified_norm`), and within about 0.1% of it once the warm-started power
iteration has converged. The estimate-only states of ``_state.py`` stay available behind
``bound="estimate"``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liptriton.bounds.certified_divisor import certified_sigma, certified_value, top_index
from liptriton.bounds.certified_norm import LEVELS, certify_top_eigenvalue
from liptriton.bounds.conv_fourier import FourierPlan, fourier_blocks, fourier_gram, fourier_plan
from liptriton.bounds.conv_operator import ConvSpec, conv_adjoint, conv_apply
from liptriton.parametrizations._state import ConvNormState

__all__ = ["CertifiedConvNorm", "CertifiedMatrixNorm", "BOUNDS", "vector_norm_certified"]

BOUNDS = ("certified", "estimate")
_CERT_DTYPE = torch.float64
# Exact (dense operator matrix) certificate for convolutions whose matrix is this small.
_MAX_DENSE_ENTRIES = 2**18


def _real_shape(h: Tensor) -> tuple[int, int]:
    """Shape of the real state vectors of Gram matrices ``h``: a complex Hermitian matrix's
    vectors ``x + i y`` are kept as ``[x; y]``, its real embedding's eigenvectors."""
    return (h.shape[0], h.shape[-1] * (2 if h.is_complex() else 1))


def _to_gram_space(v: Tensor, h: Tensor) -> Tensor:
    if not h.is_complex():
        return v
    half = v.shape[-1] // 2
    return torch.complex(v[..., :half], v[..., half:])


def _to_real(v: Tensor) -> Tensor:
    return torch.cat([v.real, v.imag], -1) if v.is_complex() else v


class _Certified(nn.Module):
    """Shared logic: blocks -> Gram on the smaller side -> certificate -> divisor."""

    DEFAULT_ITERS = 8  # Lanczos steps per training forward (measured: the estimate stays within 1e-3)

    def _blocks(self, w: Tensor, index: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gram(self, w: Tensor) -> Tensor:
        b = self._blocks(w)
        return b.mT @ b

    def _certified(self, w: Tensor, update: bool) -> Tensor:
        fresh = self.fresh
        with torch.no_grad():
            h = self._gram(w.detach().to(_CERT_DTYPE))
            v = self.v
            if v.shape != _real_shape(h):  # first use, or a new input size
                v = torch.randn(_real_shape(h), dtype=v.dtype, device=v.device)
                fresh = True
            steps = self.n_iters_init if fresh else (self.n_iters if update else 0)
            v = _to_gram_space(v.to(_CERT_DTYPE), h)
            if fresh:  # rank every matrix, converge the top ones, refine, certify tightly
                bound, v_new, i = certify_top_eigenvalue(h, v, steps, refine=3, power=8, index=True)
            else:
                bound, v_new, i = certify_top_eigenvalue(h, v, steps, index=True)
            v_new = _to_real(v_new)
            if update or fresh:
                if self.v.shape != v_new.shape:
                    self.v = v_new.to(self.v.dtype)
                else:
                    self.v.copy_(v_new)
                self.fresh = False
            else:  # the stored vectors stay: their top block
                i = top_index(h, _to_gram_space(self.v.to(_CERT_DTYPE), h))
        # The gradient is that of the top block's estimate; clone: the next in-place update must
        # not touch what this graph saved for backward.
        return self._divisor(w, i, bound * self.gather ** 2)

    def _divisor(self, w: Tensor, i: Tensor, bound_sq: Tensor) -> Tensor:
        return certified_sigma(self._blocks(w, i), bound_sq, self.v.index_select(0, i.reshape(1)))


def vector_norm_certified(wb: Tensor, reduce: bool = True) -> Tensor:
    """The certified norm of a batch of vectors (B, 1, n) or (B, n, 1): its spectral norm is its
    Euclidean norm, exactly; the float64 sum of ``n`` squares is within a relative ``n * 2^-53``,
    and the division by it in the weight's dtype rounds each entry by a relative 2^-24 (float32):
    both covered by the certificate's tightest level, ``1 + 1e-6``. A handful of ops instead of the
    certificate's eigensolver and factorization.

    Args:
        wb: (B, m, n) with ``min(m, n) == 1``, differentiable.
        reduce: True: the largest norm over the batch (0-d); False: each one (B,).

    Returns:
        The certified norm(s), of ``wb``'s dtype, with the gradient of the norm.

    Examples:
        >>> round(float(vector_norm_certified(torch.tensor([[[3.0, 4.0]]]))), 4)  # 5 (1 + 1e-6)
        5.0
    """
    with torch.no_grad():
        sq = wb.detach().to(_CERT_DTYPE).square().sum((-2, -1))
        bound_sq = sq * (1 + (wb.shape[-1] * wb.shape[-2] + 4) * 2.0**-52) * LEVELS[0] ** 2
    est = wb.norm(dim=(-2, -1))
    return certified_value(est.amax(), bound_sq.amax()) if reduce else certified_value(est, bound_sq)


class CertifiedMatrixNorm(_Certified):
    """Certified spectral norm of a batch of matrices (B, m, n) (dense layers).

    Args:
        batch_shape: (B, m, n).
        n_iters: Lanczos steps per training forward on the Gram matrix (None: 8).
        n_iters_init: Lanczos steps on fresh state.
        device: where the state lives.
    """

    gather = 1.0

    def __init__(self, batch_shape: tuple[int, int, int], n_iters: int | None, n_iters_init: int,
                 device: torch.device | None = None) -> None:
        super().__init__()
        b, m, n = batch_shape
        self.wide = m <= n
        self.n_iters = n_iters or self.DEFAULT_ITERS
        self.n_iters_init = n_iters_init
        self.register_buffer("v", torch.randn(b, min(m, n), device=device, dtype=torch.float32))
        self.fresh = True

    def _blocks(self, wb: Tensor, index: Tensor | None = None) -> Tensor:
        b = wb.mT if self.wide else wb
        return b if index is None else b.index_select(0, index.reshape(1))

    def norm(self, wb: Tensor, update: bool) -> Tensor:
        """Return the certified norm (0-d: the largest over the batch), differentiable in ``wb``."""
        if min(wb.shape[-2:]) == 1:  # a vector (a critic's or a binary classifier's head)
            return vector_norm_certified(wb)
        return self._certified(wb, update)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "v" in state_dict:
            self.fresh = False


class CertifiedConvNorm(_Certified, ConvNormState):
    """Certified norm of a convolution operator at the largest input size seen.

    Small operators (matrix of at most 2**18 entries) use the exact operator matrix; larger ones
    its frequency blocks (:mod:`liptriton.bounds.conv_fourier`), a guaranteed bound whose excess
    over the norm shrinks with the input size (+2 to +4% at 8 x 8, +0.2% at 28 x 28). The input
    size is learned as in :class:`ConvNormState`; its vector ``x`` is not iterated here (export
    converges its own copy on the baked weight for the measured norm).

    Args:
        spec: the operator geometry.
        weight_shape: the layer's weight shape.
        in_channels: channels of the operator's input.
        input_size: spatial size to start with (default 16 per dimension, 8 in 3-D).
        n_iters: Lanczos steps per training forward (None: 8).
        n_iters_init: Lanczos steps on fresh state.
        device: where the state lives.
    """

    BLOCK = 1

    def __init__(self, spec: ConvSpec, weight_shape: tuple[int, ...], in_channels: int,
                 input_size: tuple[int, ...] | None, n_iters: int | None, n_iters_init: int,
                 device: torch.device | None = None) -> None:
        ConvNormState.__init__(self, spec, in_channels, input_size, n_iters or self.DEFAULT_ITERS, n_iters_init,
                               device)
        self.weight_shape = tuple(weight_shape)
        self._plan: tuple[tuple[int, ...], FourierPlan | None, float] | None = None
        self.register_buffer("v", torch.randn(self._state_shape(), device=device))

    def _ensure_plan(self, device: torch.device) -> tuple[FourierPlan | None, float]:
        size = self.input_size
        if self._plan is None or self._plan[0] != size or (
                self._plan[1] is not None and self._plan[1].table.device != device):
            in_dim, out_dim = self._dims()
            if in_dim * out_dim <= _MAX_DENSE_ENTRIES:
                self._plan = (size, None, 1.0)
            else:
                plan = fourier_plan(self.spec, self.weight_shape, size, device)
                self._plan = (size, plan, plan.gather)
        return self._plan[1], self._plan[2]

    def _state_shape(self) -> tuple[int, int]:
        """(matrices, side) of the Gram matrices at the current input size."""
        plan, _ = self._ensure_plan(self.x.device)
        if plan is not None:
            return plan.groups * plan.frequencies, plan.size
        return 1, min(self._dims())

    def _dims(self) -> tuple[int, int]:
        """Input and output dimensions of the operator at the tracked input size."""
        size = self.input_size
        c_out = self.weight_shape[1] * self.spec.groups if self.spec.transposed else self.weight_shape[0]
        out = self.spec.output_shape(torch.empty(self.weight_shape, device="meta"), size)
        return self.x.shape[1] * math.prod(size), c_out * math.prod(out)

    @property
    def gather(self) -> float:
        return self._plan[2] if self._plan is not None else 1.0

    @property
    def method(self) -> str:
        """"dense" (exact operator matrix) or "fourier" (frequency blocks) at the current size."""
        plan, _ = self._ensure_plan(self.x.device)
        return "dense" if plan is None else "fourier"

    def _gram(self, w: Tensor) -> Tensor:
        plan, _ = self._ensure_plan(w.device)
        return super()._gram(w) if plan is None else fourier_gram(plan, w)

    def _blocks(self, w: Tensor, index: Tensor | None = None) -> Tensor:
        plan, _ = self._ensure_plan(w.device)
        if plan is not None:
            return fourier_blocks(plan, w, index)
        size = self.input_size
        c_in = self.x.shape[1]
        eye = torch.eye(c_in * math.prod(size), dtype=w.dtype, device=w.device).reshape(-1, c_in, *size)
        a = conv_apply(self.spec, w, eye).flatten(1)  # (in_dim, out_dim): rows are A^T
        return (a.mT if a.shape[0] <= a.shape[1] else a).unsqueeze(0)

    def _divisor(self, w: Tensor, i: Tensor, bound_sq: Tensor) -> Tensor:
        plan, _ = self._ensure_plan(w.device)
        if plan is not None:
            return super()._divisor(w, i, bound_sq)
        # Exact operator: its estimate through the convolution itself (one image), not through
        # the operator matrix (one image per input dimension, and its backward).
        v = self.v[0].to(w.dtype)
        in_dim, out_dim = self._dims()
        if in_dim <= out_dim:  # v is an input: ||A v||
            est = conv_apply(self.spec, w, v.reshape(1, self.x.shape[1], *self.input_size)).norm()
        else:  # v is an output: ||A^T v||
            c_out = w.shape[1] * self.spec.groups if self.spec.transposed else w.shape[0]
            out = self.spec.output_shape(torch.empty(self.weight_shape, device="meta"), self.input_size)
            est = conv_adjoint(self.spec, w, v.reshape(1, c_out, *out), self.input_size).norm()
        return certified_value(est, bound_sq)

    def norm(self, w: Tensor, update: bool) -> Tensor:
        """Return the certified operator norm at the tracked input size (differentiable in ``w``)."""
        if self.deferred:  # registration's shape check: converge later, at the real input size
            return self._certified_value(w)
        return self._certified(w, update)

    def _certified_value(self, w: Tensor) -> Tensor:
        with torch.no_grad():
            h = self._gram(w.detach().to(_CERT_DTYPE))
            bound, _ = certify_top_eigenvalue(h, torch.randn(h.shape[:-1], dtype=h.dtype, device=w.device), 20)
        return (bound * self.gather ** 2).sqrt().to(w.dtype).clamp_min(1e-30)

    def observe(self, inp: Tensor) -> None:
        size = self.input_size
        super().observe(inp)
        if self.input_size != size:
            self.fresh = True
            self.v = torch.randn(self._state_shape(), device=self.v.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in ("x", "v"):
            if prefix + key in state_dict and state_dict[prefix + key].shape != getattr(self, key).shape:
                setattr(self, key, torch.empty_like(state_dict[prefix + key], device=self.x.device))
        ConvNormState._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)
