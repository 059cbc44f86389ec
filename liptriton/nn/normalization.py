"""Lipschitz normalization layers of deel-torchlip, drop-in: LayerCentering, BatchCentering,
BatchLipNorm, ScaleBiasLayer.

Same outputs and running statistics as deel-torchlip; the data-dependent branches of its
BatchLipNorm (``.item()`` tests) are written as tensor selects, so the layers compile without
graph breaks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from liptriton.nn.scaling import ScaledLipschitzModule

__all__ = [
    "BatchCentering",
    "BatchCentering2d",
    "BatchLipNorm",
    "LayerCentering",
    "LayerCentering2d",
    "ScaleBiasLayer",
]


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    return t.view((1, -1) + (1,) * (x.dim() - 2))


class LayerCentering(nn.Module):
    r"""``y = x - mean(x, dim) + beta``: 1-Lipschitz (an orthogonal projection plus a bias).

    Args:
        num_features: channels (size of ``beta``).
        dim: dimensions of the mean (default the last two: (H, W) of an image).
        bias: learn ``beta`` (per channel, zero-initialized).

    Examples:
        >>> LayerCentering(2)(torch.ones(1, 2, 3, 3)).abs().max().item()
        0.0
    """

    def __init__(self, num_features: int = 1, dim: tuple | list = (-2, -1), bias: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None
        self.dim = tuple(dim) if isinstance(dim, (list, tuple)) else dim

    def forward(self, x: Tensor) -> Tensor:
        out = x - x.mean(dim=self.dim, keepdim=True)
        return out if self.bias is None else out + _channel_view(self.bias, x)


LayerCentering2d = LayerCentering


class ScaleBiasLayer(nn.Module):
    """``y = x * scalar + bias``: the plain export of a batch normalization (``|scalar|``-Lipschitz).

    Args:
        scalar: the (fixed) multiplier.
        num_features: channels (size of ``bias``).
        bias: learn a per-channel bias (zero-initialized).

    Examples:
        >>> ScaleBiasLayer(2.0, 3)(torch.ones(1, 3)).tolist()
        [[2.0, 2.0, 2.0]]
    """

    def __init__(self, scalar: float | Tensor = 1.0, num_features: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.scalar = scalar
        self.num_features = num_features
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        out = x * self.scalar
        return out if self.bias is None else out + _channel_view(self.bias, x)


class BatchLipNorm(nn.Module, ScaledLipschitzModule):
    r"""Batch normalization by one scale for all channels: ``y = (x - E[x]) / sqrt(max_c Var[x_c]) + beta``.

    Statistics of the batch in training (summed across processes when torch.distributed is
    initialized); in eval, the averages of the training batches (each eval forward folds the
    sums of the epoch into one batch, as deel-torchlip). Variances below ``eps`` count as 1.
    The layer is ``1 / sqrt(max Var)``-Lipschitz in eval (not 1-Lipschitz); :meth:`get_scaling`
    gives that factor (what a deel-torchlip ``SharedLipFactory`` multiplies).

    Args:
        num_features: channels.
        dim: dimensions of the statistics (default: all but the channel dimension 1).
        centering: subtract the mean.
        bias: learn ``beta`` (per channel, zero-initialized).
        normalize: divide by the largest standard deviation (False: BatchCentering).
        factory: optional deel-torchlip style factory; ``factory.register(self)`` is called.
        eps: variances below it are replaced by 1.

    Examples:
        >>> bn = BatchLipNorm(3)
        >>> y = bn(torch.randn(8, 3, 4, 4))
    """

    def __init__(self, num_features: int = 1, dim: tuple | None = None, centering: bool = True, bias: bool = True,
                 normalize: bool = True, factory=None, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features, self.dim, self.centering = num_features, dim, centering
        self.normalize, self.eps, self.factory = normalize, eps, factory
        self.scaling = normalize
        self.register_buffer("running_sum_bmean", torch.zeros(num_features))
        self.register_buffer("running_num_batches", torch.zeros(1, dtype=torch.long))
        if normalize:
            self.register_buffer("running_sum_bmeansq", torch.zeros(num_features))
            self.register_buffer("running_mean_sample_per_batches", torch.zeros(1))
            self.register_buffer("total_num_samples", torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None
        self._first = True
        if factory is not None:
            factory.register(self)

    def _dims(self, x: Tensor) -> tuple[int, ...]:
        return tuple(self.dim) if self.dim is not None else (0, *range(2, x.dim()))

    def reset_states(self) -> None:
        """Zero the running statistics."""
        for b in self.buffers():
            b.zero_()

    @torch.no_grad()
    def update_running_values(self) -> None:
        """Fold the sums of the batches seen so far into one batch (done by every eval forward)."""
        n = self.running_num_batches
        fold = n > 1
        nf = n.clamp_min(1).to(self.running_sum_bmean.dtype)
        self.running_sum_bmean.copy_(torch.where(fold, self.running_sum_bmean / nf, self.running_sum_bmean))
        if self.normalize:
            self.running_sum_bmeansq.copy_(torch.where(fold, self.running_sum_bmeansq / nf, self.running_sum_bmeansq))
            per_batch = self.running_mean_sample_per_batches
            self.total_num_samples.copy_(torch.where(fold, per_batch, self.total_num_samples))
            per_batch.copy_(torch.where(fold, per_batch / nf, per_batch))
        n.copy_(torch.where(fold, torch.ones_like(n), n))

    def _running_stats(self) -> tuple[Tensor, Tensor]:
        n = self.running_num_batches
        nf = n.clamp_min(1).to(self.running_sum_bmean.dtype)
        mean = torch.where(n > 0, self.running_sum_bmean / nf, torch.zeros_like(self.running_sum_bmean))
        if not self.normalize:
            return mean, torch.ones_like(mean)
        meansq = self.running_sum_bmeansq / nf
        total = torch.where(self.total_num_samples == 0, self.running_mean_sample_per_batches, self.total_num_samples)
        var = (meansq - mean * mean) * (total / (total - 1))
        var = torch.where(n > 0, var, torch.ones_like(var))
        return mean, var

    def get_scaling(self, training: bool = False) -> Tensor:
        """The factor ``1 / sqrt(max_c Var_c)`` (eval statistics unless ``training``)."""
        if training:
            return self._scale
        _, var = self._running_stats()
        return self._scale_of(var)

    def get_scaling_factor(self, training: bool = False) -> Tensor:
        """deel-torchlip's name: :meth:`get_scaling`, or 1 without ``normalize``."""
        return self.get_scaling(training) if self.normalize else torch.ones(1)

    def _scale_of(self, var: Tensor) -> Tensor:
        var = torch.where(var < self.eps, torch.ones_like(var), var)
        return var.max().rsqrt()

    def forward(self, x: Tensor) -> Tensor:
        dims = self._dims(x)
        count = x.numel() // x.size(1)
        if self.training:
            if self._first:
                self.reset_states()
                self._first = False
            mean = x.mean(dim=dims) if self.centering else x.new_zeros(self.num_features)
            stats = [mean.detach().clone(), torch.ones_like(self.running_num_batches)]
            if self.normalize:
                meansq = (x * x).mean(dim=dims)
                stats.append(meansq.detach().clone())
            if dist.is_available() and dist.is_initialized():
                for t in stats:
                    dist.all_reduce(t)
            with torch.no_grad():
                self.running_sum_bmean += stats[0]
                self.running_num_batches += stats[1]
                if self.normalize:
                    self.running_sum_bmeansq += stats[2]
                    self.running_mean_sample_per_batches += count * stats[1]
            if self.normalize:
                var = (meansq - mean * mean) * (count / (count - 1))
                scale = self._scale_of(var)
            else:
                scale = x.new_ones(())
        else:
            self.update_running_values()
            mean, var = self._running_stats()
            scale = self._scale_of(var) if self.normalize else x.new_ones(())
        self._scale = scale
        out = (x - _channel_view(mean, x)) * scale
        return out if self.bias is None else out + _channel_view(self.bias, x)

    def vanilla_export(self) -> ScaleBiasLayer:
        """A :class:`ScaleBiasLayer` computing the eval-mode function."""
        with torch.no_grad():
            self.update_running_values()
            mean, var = self._running_stats()
            scale = self._scale_of(var) if self.normalize else torch.ones((), device=mean.device)
            bias = -mean * scale
            if self.bias is not None:
                bias = bias + self.bias
        layer = ScaleBiasLayer(scalar=scale.detach().clone(), num_features=self.num_features, bias=True)
        layer.to(bias.device)
        with torch.no_grad():
            layer.bias.copy_(bias)
        return layer


class BatchCentering(BatchLipNorm):
    r"""``y = x - E_batch[x] + beta`` (running mean in eval): 1-Lipschitz.

    Args:
        num_features: channels.
        dim: dimensions of the mean (default: all but the channel dimension 1).
        bias: learn ``beta``.

    Examples:
        >>> bc = BatchCentering(3)
        >>> y = bc(torch.randn(8, 3, 4, 4))
    """

    def __init__(self, num_features: int = 1, dim: tuple | None = None, bias: bool = True) -> None:
        super().__init__(num_features=num_features, dim=dim, centering=True, bias=bias, normalize=False)


BatchCentering2d = BatchCentering
