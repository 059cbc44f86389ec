"""Lipschitz constants of standard modules and the small modules lipschitzify inserts.

Shared by :mod:`liptriton.convert` (which inserts the modules) and :mod:`liptriton.certify`
(which bounds them). Pooling constants come from Schur's test, ``||A||_2 <= sqrt(||A||_1 ||A||_inf)``,
exact for non-negative operators with uniform row and column sums (non-overlapping average
pooling), and from window overlap counts for max pooling: ``||maxpool(x) - maxpool(y)||^2 <=
sum_windows max_i |x_i - y_i|^2 <= (max windows per element) ||x - y||^2``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liptriton._origin import FOLDED

__all__ = ["ACTIVATION_CONSTANTS", "ConvexSum", "Scaled", "ScaledAdaptivePool", "adaptive_windows_bound",
           "avg_pool_nominal", "convert_module", "fold_batchnorm", "window_overlap"]

# Largest |f'| (rounded up), measured on a 2e6-point grid of [-10, 10] in float64 and checked by tests.
ACTIVATION_CONSTANTS: dict[type, float] = {
    nn.ReLU: 1.0, nn.ReLU6: 1.0, nn.Tanh: 1.0, nn.Hardtanh: 1.0, nn.Softsign: 1.0, nn.Identity: 1.0,
    nn.Sigmoid: 0.25, nn.Hardsigmoid: 1.0 / 6.0, nn.LogSigmoid: 1.0, nn.Softplus: 1.0, nn.CELU: 1.0,
    nn.Tanhshrink: 1.0, nn.Softshrink: 1.0, nn.Flatten: 1.0, nn.Unflatten: 1.0,
    nn.GELU: 1.129, nn.SiLU: 1.0999, nn.Mish: 1.0885, nn.Hardswish: 1.5, nn.SELU: 1.7581,
}


def activation_constant(module: nn.Module) -> float | None:
    """The Lipschitz constant of an elementwise activation module, or None if unknown."""
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, nn.ELU):
        return max(1.0, abs(float(module.alpha)))  # slope alpha e^x for x < 0: |alpha| at 0
    if isinstance(module, nn.PReLU):
        return max(1.0, float(module.weight.detach().abs().max()))
    if isinstance(module, nn.Threshold):
        return math.inf if module.value != module.threshold else 1.0  # a jump unless continuous
    return ACTIVATION_CONSTANTS.get(type(module))


def _tuple(v, nd: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def window_overlap(kernel, stride, dilation, nd: int) -> int:
    """Largest number of pooling windows that contain one input element (on the infinite grid).

    Position ``i`` lies in window ``m`` when ``i = s m + d j`` for some tap ``j < k``: each tap
    gives at most one window, so the count per dimension is the largest number of taps with the
    same ``d j mod s``; windows are products over dimensions.

    Examples:
        >>> window_overlap(3, 2, 1, 2)
        4
    """
    total = 1
    for k, s, d in zip(_tuple(kernel, nd), _tuple(stride if stride else kernel, nd), _tuple(dilation, nd)):
        residues = [(d * j) % s for j in range(k)]
        total *= max(residues.count(r) for r in set(residues))
    return total


def adaptive_windows_bound(sizes: tuple[int, ...], outs: tuple[int | None, ...], average: bool) -> float:
    """Norm bound of adaptive pooling from ``sizes`` to ``outs`` (separable, per dimension).

    Average: Schur's test (rows sum to 1, columns to the sum of 1/len over the windows holding
    the element): exact when the windows tile the input. Max: sqrt of the largest overlap count.
    """
    total = 1.0
    for n, o in zip(sizes, outs):
        o = n if o is None else o
        cols = [0.0] * n
        for i in range(o):
            start, end = (i * n) // o, -((-(i + 1) * n) // o)
            for p in range(start, end):
                cols[p] += 1.0 / (end - start) if average else 1.0
        total *= max(cols)
    return math.sqrt(total)


def avg_pool_nominal(pool: nn.Module, nd: int) -> float:
    """A size-free Schur bound of ``nn.AvgPoolNd``: rows sum to <= 1, a column to at most
    overlap / smallest divisor (the full window unless ceil_mode or padding excluded from it)."""
    k = _tuple(pool.kernel_size, nd)
    pad = any(p > 0 for p in _tuple(pool.padding, nd))
    divisor = getattr(pool, "divisor_override", None)
    if divisor is None:
        exclude = pool.ceil_mode or (pad and not pool.count_include_pad)
        divisor = 1 if exclude else math.prod(k)
    overlap = window_overlap(k, pool.stride, 1, nd)
    rows = 1.0 if getattr(pool, "divisor_override", None) is None else math.prod(k) / divisor
    return math.sqrt(rows * overlap / divisor)


class ConvexSum(nn.Module):
    """``sum_i s_i w_i x_i`` with learnable convex weights ``w = softmax(logits)`` and signs ``s_i``.

    Replaces a residual ``x + f(x)`` (or a difference): if each term is L-Lipschitz, so is the
    result (``sum_i w_i L_i <= max_i L_i``), where the plain sum would be 2L-Lipschitz.

    Args:
        signs: +1.0 or -1.0 per term.
        init: initial weight of the first term (the identity branch of a residual).

    Examples:
        >>> m = ConvexSum((1.0, 1.0))
        >>> m(torch.ones(2), torch.ones(2))
        tensor([1., 1.], grad_fn=<AddBackward0>)
    """

    def __init__(self, signs: tuple[float, ...], init: float = 0.5) -> None:
        super().__init__()
        n = len(signs)
        first = math.log(init * (n - 1) / (1.0 - init)) if n > 1 and 0.0 < init < 1.0 else 0.0
        self.logits = nn.Parameter(torch.tensor([first] + [0.0] * (n - 1)))
        self.register_buffer("signs", torch.tensor(signs, dtype=torch.float32))

    def weights(self) -> Tensor:
        """The convex weights times the signs."""
        return torch.softmax(self.logits, 0) * self.signs

    def forward(self, *xs: Tensor) -> Tensor:
        w = self.weights().to(xs[0].dtype)
        out = xs[0] * w[0]
        for i in range(1, len(xs)):
            out = out + xs[i] * w[i]
        return out


class Scaled(nn.Module):
    """``scale * module(x)``: makes a module with a known constant c 1-Lipschitz (scale = 1/c).

    Args:
        module: the wrapped module.
        scale: the constant factor (> 0).

    Examples:
        >>> Scaled(torch.nn.GELU(), 1 / 1.129)(torch.zeros(1))
        tensor([0.])
    """

    def __init__(self, module: nn.Module, scale: float) -> None:
        super().__init__()
        self.module = module
        self.scale = float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x) * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


class ScaledAdaptivePool(nn.Module):
    """Adaptive average or max pooling divided by its norm bound at the input's size.

    The factor depends only on the (static) shapes, so it is a constant under torch.compile.
    Global average pooling over n elements becomes ``sqrt(n) * mean``: exactly 1-Lipschitz.

    Args:
        pool: an ``nn.AdaptiveAvgPoolNd`` or ``nn.AdaptiveMaxPoolNd``.

    Examples:
        >>> ScaledAdaptivePool(torch.nn.AdaptiveAvgPool2d(1))(torch.ones(1, 1, 2, 2)).flatten()
        tensor([2.])
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.average = isinstance(pool, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d))

    def factor(self, sizes: tuple[int, ...]) -> float:
        """The norm bound of the wrapped pooling at spatial size ``sizes``."""
        outs = _tuple(self.pool.output_size, len(sizes))
        return adaptive_windows_bound(tuple(int(s) for s in sizes), outs, self.average)

    def forward(self, x: Tensor) -> Tensor:
        nd = 1 if isinstance(self.pool, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) else (
            2 if isinstance(self.pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) else 3)
        return self.pool(x) * (1.0 / self.factor(tuple(x.shape[-nd:])))


_BN = nn.modules.batchnorm._BatchNorm
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
             nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAX = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def fold_batchnorm(gm, report, mode: str) -> None:
    """Fold each eval-mode BatchNorm into the Linear / Conv (not transposed) that alone feeds it.

    ``w' = w * gamma / sqrt(var + eps)`` per output channel, ``b' = (b - mean) gamma / sqrt(var + eps) + beta``.
    Nothing is done unless ``mode == "fold"``; BatchNorms left are handled by :func:`convert_module`.
    """
    if mode != "fold":
        return
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(bn := gm.get_submodule(node.target), _BN):
            continue
        prev = node.args[0]
        if not (getattr(prev, "op", None) == "call_module" and len(prev.users) == 1 and bn.running_var is not None):
            continue
        layer = gm.get_submodule(prev.target)
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or hasattr(layer, "parametrizations"):
            continue
        with torch.no_grad():
            scale = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
            scale = scale / torch.sqrt(bn.running_var + bn.eps)
            shift = bn.bias.detach() if bn.bias is not None else torch.zeros_like(scale)
            bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
            layer.weight.mul_(scale.reshape(-1, *([1] * (layer.weight.dim() - 1))).to(layer.weight.dtype))
            new_bias = ((bias - bn.running_mean) * scale + shift).to(layer.weight.dtype)
            if layer.bias is None:
                layer.bias = nn.Parameter(new_bias)
            else:
                layer.bias.copy_(new_bias)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        gm.meta.setdefault(FOLDED, {})[prev.target] = node.target  # save writes the bias back into the BN
        report.change(node.target, type(bn).__name__, f"folded into {prev.target}")
    gm.delete_all_unused_submodules()


def _is_2d(mod) -> bool:
    return type(mod).__name__.endswith("2d")


def convert_module(mod: nn.Module, where: str, report, ctx: dict) -> nn.Module | None:
    """Constrain or replace one leaf module; return its replacement (None: keep it, maybe modified)."""
    from liptriton._bounds import _LIP_ACTS, _LIP_LEAVES, _NO_BOUND
    from liptriton.nn import pooling as lp

    name = type(mod).__name__
    if isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
        if hasattr(mod, "parametrizations"):
            report.change(where, name, "already parametrized: kept")
            return None
        ctx["method"](mod, k=ctx["layer_k"], **ctx["method_kwargs"])
        report.change(where, name, f"{ctx['method'].__name__}(k={ctx['layer_k']:.6g})")
        return None
    if name in _LIP_ACTS or name in _LIP_LEAVES or isinstance(mod, (ConvexSum, Scaled, ScaledAdaptivePool)):
        return None
    if hasattr(type(mod), "_coefficient_lip") or callable(getattr(mod, "lipschitz_bound", None)):
        return None  # liptriton layers: their own bound
    if isinstance(mod, _DROPOUT):
        if ctx["dropout"] == "remove":
            report.change(where, name, "removed (Identity)")
            return nn.Identity()
        report.change(where, name, "kept: identity in eval (the training forward scales by 1/(1-p))")
        return None
    if type(mod).__name__ == "StochasticDepth" and type(mod).__module__.startswith("torchvision."):
        if ctx["dropout"] == "remove":
            report.change(where, name, "removed (Identity)")
            return nn.Identity()
        report.change(where, name, "kept: identity in eval (in training it drops residual branches, like dropout)")
        return None
    if isinstance(mod, _BN):
        if ctx["batchnorm"] == "error":
            report.block(where, f"{name} (batchnorm='error'; use 'fold' or 'remove')")
            return None
        report.change(where, name, "removed (Identity): no Linear/Conv to fold into" if ctx["batchnorm"] == "fold"
                      else "removed (Identity)")
        return nn.Identity()
    if isinstance(mod, _MAX):
        nd = int(name[-2])
        c = math.sqrt(window_overlap(mod.kernel_size, mod.stride, mod.dilation, nd))
        if c > 1 and ctx["maxpool"] == "scale":
            report.change(where, name, f"overlapping windows: scaled by 1/{c:.4g}")
            return Scaled(mod, 1.0 / c)
        return None
    if isinstance(mod, _AVG):
        return _convert_avg(mod, where, report, ctx, lp)
    if isinstance(mod, _ADAPTIVE):
        out = mod.output_size
        unit = out in (1, (1, 1)) or (isinstance(out, tuple) and all(o == 1 for o in out))
        if _is_2d(mod) and unit and "Avg" in name and ctx["pooling"] == "l2":
            report.change(where, name, "ScaledAdaptativeL2NormPool2d")
            return lp.ScaledAdaptativeL2NormPool2d()
        if _is_2d(mod) and unit and "Avg" in name:
            report.change(where, name, "ScaledAdaptiveAvgPool2d (sqrt(H W) * mean)")
            return lp.ScaledAdaptiveAvgPool2d(1)
        report.change(where, name, "divided by its norm bound at the input size (ScaledAdaptivePool)")
        return ScaledAdaptivePool(mod)
    c = activation_constant(mod)
    if c is not None:
        if c <= 1 or ctx["activations"] == "keep" or math.isinf(c):
            if math.isinf(c):
                report.block(where, f"{name} is discontinuous")
            return None
        if ctx["activations"] == "groupsort":
            from liptriton.nn.activations import GroupSort2

            report.change(where, name, f"GroupSort2 (constant {c:.4g} > 1)")
            return GroupSort2()
        report.change(where, name, f"scaled by 1/{c:.6g}")
        return Scaled(mod, 1.0 / c)
    if isinstance(mod, nn.Softmax):
        return None
    if isinstance(mod, nn.MultiheadAttention):
        report.block(where, "MultiheadAttention: softmax attention has no finite global Lipschitz bound")
    elif isinstance(mod, _NO_BOUND):
        report.block(where, f"{name} divides by a data-dependent norm (no finite bound); use BatchLipNorm / "
                            "LayerCentering")
    else:
        report.block(where, f"no Lipschitz rule for {name}")
    return None


def _convert_avg(mod: nn.Module, where: str, report, ctx: dict, lp) -> nn.Module | None:
    nd = int(type(mod).__name__[-2])
    k = _tuple(mod.kernel_size, nd)
    stride = _tuple(mod.stride if mod.stride else mod.kernel_size, nd)
    simple = (k == stride and not any(_tuple(mod.padding, nd)) and not mod.ceil_mode
              and getattr(mod, "divisor_override", None) is None)
    if ctx["pooling"] == "keep":
        return None
    if ctx["pooling"] == "l2" and not any(_tuple(mod.padding, nd)):  # LPPool has no padding
        if nd == 2 and simple:
            report.change(where, type(mod).__name__, "ScaledL2NormPool2d")
            return lp.ScaledL2NormPool2d(k, stride)
        pool = (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d)[nd - 1](2, k, stride, mod.ceil_mode)
        c = math.sqrt(window_overlap(k, stride, 1, nd))
        report.change(where, type(mod).__name__, f"l2-norm pooling scaled by 1/{c:.4g}")
        return Scaled(pool, 1.0 / c)
    if nd == 2 and simple:
        report.change(where, type(mod).__name__, "ScaledAvgPool2d (sqrt(window) * mean)")
        return lp.ScaledAvgPool2d(k, stride, count_include_pad=mod.count_include_pad)
    c = avg_pool_nominal(mod, nd)
    report.change(where, type(mod).__name__, f"scaled by 1/{c:.6g} (Schur bound)")
    return Scaled(mod, 1.0 / c)
