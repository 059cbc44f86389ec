"""Dense power iteration: the public op, its torch reference and its dispatch.

The op advances the singular-vector estimates ``(u, v)`` of ``W`` by ``n_iters`` steps; it is
not differentiable (callers run it under ``no_grad`` and compute ``sigma = u^T W v`` with the
gradient through ``W`` only, as ``torch.nn.utils.parametrizations.spectral_norm``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from liptriton.ops._dispatch import HAS_TRITON, kernel_runnable, use_triton
from liptriton.ops._register import register_triton_op

__all__ = ["power_iteration", "power_iteration_reference", "spectral_sigma"]

_EPS = 1e-12


def _check(w: Tensor, u: Tensor, v: Tensor, n_iters: int) -> None:
    if not w.is_floating_point():
        raise TypeError(f"power_iteration: w must be a floating-point tensor, got dtype {w.dtype}")
    if w.dim() < 2:
        raise ValueError(f"power_iteration: w must have shape (..., m, n), got {tuple(w.shape)}")
    if u.shape != w.shape[:-1] or v.shape != w.shape[:-2] + w.shape[-1:]:
        raise ValueError(
            f"power_iteration: expected u of shape {tuple(w.shape[:-1])} and v of shape "
            f"{tuple(w.shape[:-2] + w.shape[-1:])} for w of shape {tuple(w.shape)}, "
            f"got u {tuple(u.shape)} and v {tuple(v.shape)}"
        )
    if not isinstance(n_iters, int) or n_iters < 1:
        raise ValueError(f"power_iteration: n_iters must be an integer >= 1, got {n_iters!r}")


def power_iteration_reference(w: Tensor, u: Tensor, v: Tensor, n_iters: int = 1,
                              eps: float = _EPS) -> tuple[Tensor, Tensor]:
    """Pure-torch power iteration: ``v <- W^T u / ||.||``, ``u <- W v / ||.||``, n times.

    Args:
        w: matrix of shape (..., m, n).
        u: left vector estimate, shape (..., m).
        v: right vector estimate, shape (..., n).
        n_iters: number of steps (>= 1).
        eps: floor of the norms.

    Returns:
        The new ``(u, v)``, unit vectors, detached from ``w``.

    Examples:
        >>> w = torch.diag(torch.tensor([3.0, 1.0]))
        >>> u, v = power_iteration_reference(w, torch.ones(2), torch.ones(2), 20)
        >>> float(spectral_sigma(w, u, v))
        3.0
    """
    _check(w, u, v, n_iters)
    with torch.no_grad():
        wd = w.detach().float()
        u, v = u.float(), v.float()
        for _ in range(n_iters):
            v = F.normalize((wd.mT @ u.unsqueeze(-1)).squeeze(-1), dim=-1, eps=eps)
            u = F.normalize((wd @ v.unsqueeze(-1)).squeeze(-1), dim=-1, eps=eps)
    return u.to(w.dtype), v.to(w.dtype)


def power_iteration(w: Tensor, u: Tensor, v: Tensor, n_iters: int = 1,
                    eps: float = _EPS) -> tuple[Tensor, Tensor]:
    """Advance the singular-vector estimates of ``w`` by ``n_iters`` power steps.

    Runs one fused Triton kernel on CUDA (all steps in one program for moderate sizes) and
    :func:`power_iteration_reference` elsewhere. Not differentiable.

    Args:
        w: matrix of shape (m, n) or (B, m, n).
        u: left estimate, shape (m,) or (B, m).
        v: right estimate, shape (n,) or (B, n).
        n_iters: number of steps (>= 1).
        eps: floor of the norms.

    Returns:
        ``(u, v)``: the new unit estimates (new tensors; copy them into buffers in place).

    Examples:
        >>> import liptriton.ops as ops
        >>> w = torch.randn(6, 4)
        >>> u, v = ops.power_iteration(w, torch.randn(6), torch.randn(4), n_iters=50)
        >>> s = ops.spectral_sigma(w, u, v)
        >>> bool(torch.isclose(s, torch.linalg.matrix_norm(w, 2), rtol=1e-4))
        True
    """
    _check(w, u, v, n_iters)
    if use_triton(w):
        # The op has no autograd: detach so that tensors requiring grad pass through it.
        return torch.ops.liptriton.power_iteration(w.detach(), u.detach(), v.detach(), n_iters, float(eps))
    return power_iteration_reference(w, u, v, n_iters, eps)


def spectral_sigma(w: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Return ``u^T W v`` (the Rayleigh estimate of sigma_max), differentiable in ``w``.

    Args:
        w: matrix of shape (..., m, n).
        u: unit left vector, shape (..., m), treated as a constant.
        v: unit right vector, shape (..., n), treated as a constant.

    Returns:
        Tensor of shape (...): the estimate of the largest singular value.

    Examples:
        >>> spectral_sigma(torch.eye(2), torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0]))
        tensor(1.)
    """
    return (u.unsqueeze(-2) @ w @ v.unsqueeze(-1)).squeeze(-1).squeeze(-1)


if HAS_TRITON:
    from liptriton.kernels.power_iteration import power_iteration_forward

    def _takes_kernel(w: Tensor, *args) -> bool:
        return kernel_runnable(w) and w.numel() > 0

    def _power_iteration_forward(w: Tensor, u: Tensor, v: Tensor, n_iters: int, eps: float) -> tuple[Tensor, Tensor]:
        """Triton path of :func:`power_iteration` (not differentiable: no backward)."""
        _check(w, u, v, n_iters)
        m, n = w.shape[-2:]
        u_new, v_new = power_iteration_forward(w.reshape(-1, m, n), u.reshape(-1, m), n_iters, eps)
        return u_new.reshape(u.shape).to(w.dtype), v_new.reshape(v.shape).to(w.dtype)

    register_triton_op("power_iteration", reference=power_iteration_reference, forward=_power_iteration_forward,
                       takes_kernel=_takes_kernel)
