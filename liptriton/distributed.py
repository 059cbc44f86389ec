"""torch.distributed helpers for losses computed over the global batch.

:func:`gather` concatenates a tensor from every rank along dim 0 with autograd: its backward
sums the incoming gradients over the ranks (all-reduce) and returns this rank's slice. Every
rank then holds the same global loss ``L``, and the gradient that reaches this rank's input is
``world_size * dL/dx_rank``; DistributedDataParallel divides parameter gradients by
``world_size`` when it averages them, so the averaged gradient is exactly ``dL/dtheta`` of the
full batch on one process.

Without an initialized process group (or with a world of one) every helper is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "world_size", "rank", "gather", "all_reduce_sum"]


def is_distributed() -> bool:
    """Return True when torch.distributed is initialized with more than one process.

    Examples:
        >>> from liptriton import distributed
        >>> distributed.is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Return the number of processes (1 when torch.distributed is not initialized).

    Examples:
        >>> from liptriton import distributed
        >>> distributed.world_size()
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """Return this process's rank (0 when torch.distributed is not initialized).

    Examples:
        >>> from liptriton import distributed
        >>> distributed.rank()
        0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 (ranks may hold different batch sizes); backward all-reduces."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.contiguous()
        n = dist.get_world_size()
        sizes_t = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
        all_sizes = [torch.zeros_like(sizes_t) for _ in range(n)]
        dist.all_gather(all_sizes, sizes_t)
        sizes = [int(s.item()) for s in all_sizes]
        biggest = max(sizes)
        padded = x
        if x.shape[0] < biggest:  # all_gather needs equal shapes: pad, then cut back
            padded = torch.cat([x, x.new_zeros((biggest - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(n)]
        dist.all_gather(parts, padded)
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]]


def gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, differentiably.

    Ranks may hold different batch sizes. The backward sums the gradients of all ranks'
    copies of the global batch and returns this rank's slice (see the module docstring for why
    this makes DDP gradients equal the full-batch ones). Inside ``torch.compile`` the traceable
    functional collective ``all_gather_tensor_autograd`` is used instead (equal batch sizes;
    its backward is a reduce-scatter, supported by NCCL).

    Args:
        x: tensor of shape (n_rank, ...), on the device of the process group's backend.

    Returns:
        Tensor of shape (sum of n_rank over ranks, ...); ``x`` itself outside a distributed run.

    Examples:
        >>> from liptriton import distributed
        >>> distributed.gather(torch.ones(2, 3)).shape  # no process group: identity
        torch.Size([2, 3])
    """
    if not is_distributed():
        return x
    if torch.compiler.is_compiling():
        from torch.distributed._functional_collectives import all_gather_tensor_autograd

        return all_gather_tensor_autograd(x.contiguous(), 0, dist.group.WORLD)
    if not x.requires_grad:
        return _GatherWithGrad.apply(x).detach()
    return _GatherWithGrad.apply(x)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum ``x`` over ranks (no gradient); a copy of ``x`` outside a distributed run.

    Args:
        x: any tensor (not modified).

    Returns:
        A new tensor holding the sum over ranks.

    Examples:
        >>> from liptriton import distributed
        >>> distributed.all_reduce_sum(torch.ones(2))
        tensor([1., 1.])
    """
    out = x.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out
