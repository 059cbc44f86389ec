r"""AOL: almost-orthogonal layers (Prach & Lampert, 2022), a guaranteed bound with no iteration.

Dense weights. With ``P = |W^T W|`` (entrywise absolute value) and ``d_j = (sum_i P_ij)^{-1/2}``,
``||W diag(d)||_2 <= 1`` (Prach & Lampert, Theorem 1: ``diag(d) W^T W diag(d)`` is bounded
entrywise by ``diag(d) P diag(d)``, whose rows sum to at most 1 after the Schur test with the
positive vector ``d^{-1}``). The layer's weight is ``k W diag(d)``: the rescaling of the input
columns, exact, differentiable, the same in training and eval.

Convolutions. The operator ``A`` of a zero-padded stride-1 convolution is a compression
``P C E`` of the circular convolution ``C`` on a grid large enough that no lag wraps (``E``
embeds the zero-padded input, ``P`` keeps the outputs); ``C^T C`` is the convolution whose
kernel is the kernel's self-correlation, per input channel pair ``(c, c')`` and lag ``delta``:

    G[c, c', delta] = sum_o sum_t K[o, c, t + delta] K[o, c', t]

(within each group; a dilation spreads the lags without changing their values). The Schur
test on ``|C^T C|`` gives the per-input-channel rescaling ``d_c = (sum_{c', delta} |G[c, c', delta]|)^{-1/2}``,
and the channel scaling commutes with ``E``: ``||A diag(d)|| <= ||C diag(d)|| <= 1``, at any
input size. A stride ``s`` keeps every ``s``-th output of the stride-1 operator (a coordinate
projection, norm 1), so the same ``d`` bounds the strided operator: it uses the stride-1
bound, which upper-bounds the strided one. Other padding modes (reflect, replicate, circular,
symmetric) copy input elements, which can raise the norm above this bound: they are refused. A transposed convolution is the adjoint of
the convolution ``C_W`` with its weight: its input channels are ``C_W``'s output channels and
``A^T A = C_W C_W^T``, the convolution with kernel ``H[a, a', delta] = sum_b sum_t
W[a, b, t + delta] W[a', b, t]`` (a stride samples its lags: the full sum bounds it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from liptriton.parametrizations._base import LipschitzParametrization, WeightLayout
from liptriton.parametrizations._register import register
from liptriton.parametrizations._checks import check_positive

__all__ = ["AOL", "aol"]

_CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_PADDING_MODES = ("zeros",)
_TINY = 1e-30  # a zero column gets a finite d (its weights are zero: the product is 0)


def aol_scales(gram_sums: Tensor) -> Tensor:
    """``(sum_i |G|_ij)^{-1/2}``, clamped so that a zero column stays finite (a smaller d only
    makes the bound safer)."""
    return torch.rsqrt(gram_sums.clamp_min(_TINY))


def _self_correlation_sums(kernel: Tensor, groups: int) -> Tensor:
    """``sum_{c', delta} |G[c, c', delta]|`` per input channel ``c`` of a convolution kernel
    ``(c_out, c_in / groups, *k)`` (see the module docstring), shape (c_in,)."""
    nd = kernel.dim() - 2
    c_out, c_in_g = kernel.shape[:2]
    taps = kernel.shape[2:]
    x = kernel.transpose(0, 1)  # (c_in/g, c_out, *k): batch = in-group input channel, channels = outputs
    w = kernel.reshape(groups, c_out // groups, c_in_g, *taps).transpose(1, 2).reshape(groups * c_in_g,
                                                                                        c_out // groups, *taps)
    g = _CONVS[nd](x, w, padding=tuple(t - 1 for t in taps), groups=groups)  # (c_in/g, g * c_in/g, lags)
    sums = g.abs().reshape(c_in_g, groups, c_in_g, -1).sum(dim=(2, 3))  # (c_in/g, groups)
    return sums.transpose(0, 1).reshape(-1)  # input channel j * c_in/g + b


class AOL(LipschitzParametrization):
    """``k W diag(d)``: the AOL rescaling of the weight's inputs (see the module docstring).

    Args:
        layout: the weight's :class:`WeightLayout`.
        k: the Lipschitz constant.

    Examples:
        >>> lin = torch.nn.Linear(6, 4)
        >>> p = AOL(WeightLayout(lin, "weight", "demo"))
        >>> bool(torch.linalg.matrix_norm(p(lin.weight.detach()), 2) <= 1)
        True
    """

    def __init__(self, layout: WeightLayout, k: float = 1.0) -> None:
        super().__init__(k)
        self.layout = layout

    def compute(self, w: Tensor) -> Tensor:
        spec = self.layout.spec
        if spec is None:  # dense (m, n): rescale the n input columns
            d = aol_scales((w.mT @ w).abs().sum(dim=0))
            return w * d * self.k
        if spec.transposed:  # weight (c_in, c_out/g, *k) of the adjoint of C_W: rows are C_W's outputs
            d = aol_scales(_self_correlation_sums(w.transpose(0, 1), 1) if spec.groups == 1
                           else _transposed_sums(w, spec.groups))
            return w * d.reshape(-1, *([1] * (w.dim() - 1))) * self.k
        d = aol_scales(_self_correlation_sums(w, spec.groups))  # (c_in,)
        c_in_g = w.shape[1]
        d = d.reshape(spec.groups, 1, c_in_g).expand(spec.groups, w.shape[0] // spec.groups, c_in_g)
        return w * d.reshape(w.shape[0], c_in_g, *([1] * (w.dim() - 2))) * self.k


def _transposed_sums(w: Tensor, groups: int) -> Tensor:
    """Row sums of ``|C_W C_W^T|`` for a grouped transposed-conv weight (c_in, c_out/g, *k): per
    group, the self-correlation of the group's (c_in/g, c_out/g) block seen as a conv kernel
    whose inputs are the transposed conv's outputs."""
    blocks = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    return torch.cat([_self_correlation_sums(b.transpose(0, 1), 1) for b in blocks])


def aol(module: nn.Module, name: str = "weight", *, k: float = 1.0) -> nn.Module:
    """Constrain ``module.<name>`` by AOL rescaling (Prach & Lampert, 2022): ``k``-Lipschitz, guaranteed.

    No iteration and no state: the bound holds at every forward, in training too, whatever the
    optimizer does, and at every input size. Usually looser than Björck (the layer's norm is
    below ``k``, often well below for convolutions), and cheaper.

    Args:
        module: an ``nn.Linear``, ``nn.Conv1d/2d/3d``, ``nn.ConvTranspose1d/2d/3d`` (padding mode
            "zeros"), or any module with a 2-D tensor ``name``.
        name: the tensor to constrain.
        k: the Lipschitz constant of the layer (> 0).

    Returns:
        ``module``, with the parametrization registered.

    Raises:
        ValueError: a bad ``k``, a missing tensor, an unsupported layer or padding mode.
        TypeError: a non-floating tensor.

    Examples:
        >>> import torch, liptriton
        >>> conv = liptriton.aol(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), k=2.0)
        >>> conv(torch.randn(1, 3, 16, 16)).shape
        torch.Size([1, 8, 8, 8])
    """
    owner = f"liptriton.aol({type(module).__name__})"
    k = check_positive(owner, "k", k)
    layout = WeightLayout(module, name, owner)
    if layout.spec is not None and layout.spec.padding_mode not in _PADDING_MODES:
        raise ValueError(f"{owner}: padding_mode must be one of {_PADDING_MODES} (AOL's bound), got "
                         f"{layout.spec.padding_mode!r}")
    return register(module, name, AOL(layout, k), layout)
