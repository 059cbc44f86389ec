"""certify(model, x): a proven upper bound and a measured lower bound of a model's l2 Lipschitz constant.

The upper bound is propagated through the model's torch.fx graph (:mod:`liptriton._propagate`) from
guaranteed per-node constants (modules by their rule in :mod:`liptriton.rules`): dense layers by float64 SVD of the weight the layer
applies, convolutions by :func:`liptriton.bounds.conv_bound.conv_norm_bound` at the input's size
(exact for small operators, a circular-embedding bound otherwise), never by the layers' own
power-iteration estimates; functions and methods by the rules of :mod:`liptriton._fn_rules`,
each accounting for every input that can change its value (discontinuous, random and unknown
operations get ``inf`` with the reason). The lower bound comes from Jacobians at sample points
(:mod:`liptriton._lower`); one above the upper bound raises :class:`CertificateError`.
Everything runs on a float64 copy of the model, with its parametrizations baked into plain
weights, in eval mode: the model itself (mode, parameters, power-iteration buffers) is left as
it was.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn
from torch.nn.utils import parametrize

from liptriton._bake import bake_in_place, keep_eval_caches
from liptriton._propagate import TRACE_ERRORS, LeafTracer, NodeBound, propagate
from liptriton._certify_checks import check_finite, check_runs, check_sound, record_shapes
from liptriton._lower import jacobian_lower_bound
from liptriton.bounds.conv_bound import WARM_START
from liptriton.metrics import certified_radius

__all__ = ["Certificate", "CertificateError", "certify"]


class _Progress:
    """A minimal stderr progress bar (no dependency)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.total, self.desc, self.enabled, self.done = max(total, 1), desc, enabled, 0

    def __call__(self) -> None:
        self.done += 1
        if self.enabled:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac)
            sys.stderr.write(f"\r{self.desc} [{bar:<30}] {self.done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


@dataclass
class Certificate:
    """The result of :func:`certify`.

    Attributes:
        upper: proven upper bound of the l2 Lipschitz constant (``inf`` when a node has none).
        lower: measured lower bound (Jacobian norms / secants at sample points).
        ratio: ``upper / lower`` (tightness; 1 is exact).
        nodes: the per-node table (:class:`~liptriton._propagate.NodeBound` rows).
        unbounded: ``(node, reason)`` for every node whose own constant is infinite.
        radii: per-sample certified l2 radii of the example input's predictions (margins
            divided by ``upper``, see :func:`liptriton.metrics.certified_radius`), or None.
        lower_note: where the lower bound was reached.

    Examples:
        >>> import torch, liptriton
        >>> cert = liptriton.certify(torch.nn.Linear(4, 3), torch.randn(2, 4))
        >>> cert.lower <= cert.upper
        True
    """

    upper: float
    lower: float
    ratio: float
    nodes: list[NodeBound] = field(default_factory=list)
    unbounded: list[tuple[str, str]] = field(default_factory=list)
    radii: Tensor | None = None
    lower_note: str = ""

    def __str__(self) -> str:
        head = f"{'node':<28} {'op':<22} {'local':>11} {'bound':>11}  note"
        lines = [f"Certificate: upper {self.upper:.6g}, lower {self.lower:.6g}, ratio {self.ratio:.4g}",
                 head, "-" * len(head)]
        for r in self.nodes:
            lines.append(f"{r.name[:28]:<28} {r.op[:22]:<22} {r.local:>11.5g} {r.bound:>11.5g}  {r.note}")
        for name, reason in self.unbounded:
            lines.append(f"unbounded: {name}: {reason}")
        lines.append(f"lower bound: {self.lower_note}")
        return "\n".join(lines)


def _baked_copy(model: nn.Module) -> nn.Module:
    """float64 eval-mode copy of ``model`` with every parametrization replaced by the weight it computes.

    The model itself is not switched to eval (that converges its power iterations in place):
    the copy is, so the certificate is about the weights the model uses in eval. An eval-mode
    model's up-to-date cached weights are baked as they are (not recomputed). A convolution keeps
    its certified state's vectors as :data:`~liptriton.bounds.conv_bound.WARM_START` (a start of
    certify's own certificate of the baked weight: a valid bound from any start, a faster one
    from these).
    """
    dup = copy.deepcopy(model).eval()
    keep_eval_caches(model, dup)
    for mod in list(dup.modules()):
        if parametrize.is_parametrized(mod):
            warm = _warm_start(mod)
            bake_in_place(mod)
            if warm is not None:
                mod.__dict__[WARM_START] = warm
    return dup.double()


def _warm_start(mod: nn.Module) -> tuple[tuple[int, ...], Tensor] | None:
    """(input size, vectors) of the certified frequency-block state of ``mod.weight``, if any."""
    from liptriton.parametrizations._certified import CertifiedConvNorm

    plist = getattr(mod.parametrizations, "weight", None)
    for p in plist or ():
        conv = getattr(p, "conv", None)
        if isinstance(conv, CertifiedConvNorm) and not conv.fresh and conv.method == "fourier":
            return conv.input_size, conv.v.detach().double().clone()
    return None


class CertificateError(RuntimeError):
    """A measured lower bound above the proven upper bound: a rule of certify is wrong (a bug, never a result).

    The message names the first node of the graph whose value changed faster than its bound
    allows, with its rule.

    Examples:
        >>> issubclass(CertificateError, RuntimeError)
        True
    """


def _validate(model, example_input) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"certify: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor) or not example_input.is_floating_point():
        raise TypeError("certify: example_input must be a floating-point tensor with a batch dimension")
    if example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError(f"certify: example_input must have a batch dimension >= 1, "
                         f"got shape {tuple(example_input.shape)}")


def certify(model: nn.Module, example_input: Tensor, labels: Tensor | None = None, *, n_samples: int = 4,
            power_iters: int = 20, ascent_steps: int = 5, progress: bool | None = None) -> Certificate:
    """Prove an upper bound and measure a lower bound of ``model``'s l2 Lipschitz constant.

    Args:
        model: any module that torch.fx can trace (with liptriton layers as leaves).
        example_input: a batch of inputs at the real size (sizes matter for convolutions).
        labels: optional labels of the batch, for signed certified radii.
        n_samples: starting points of the lower-bound search (first samples of the batch).
        power_iters: power steps per point for the lower bound (the Jacobian's exact top
            singular pair instead wherever that is cheaper: an output of at most 4 entries per
            power step, one pullback each; at least as high as the power steps).
        ascent_steps: gradient-ascent steps per point for the lower bound.
        progress: show a stderr progress bar (None: when stderr is a terminal).

    Returns:
        A :class:`Certificate`. An untraceable model gets ``upper = inf`` with the reason.

    Raises:
        TypeError: a model that is not a module, or a non-floating input.
        ValueError: an input without a batch dimension, an input the model cannot run on (wrong
            size or rank: the model's own error, without torch.fx's traceback), or a parameter
            or buffer with NaN / inf entries (named).
        CertificateError: the measured lower bound exceeds the upper bound; the message names
            the first node whose value changed faster than its bound allows. This is a bug of
            liptriton (a rule that misses something), never a result.

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.bjorck(torch.nn.Linear(8, 8)), torch.nn.ReLU())
        >>> cert = liptriton.certify(net, torch.randn(4, 8))
        >>> cert.upper <= 1.001
        True
    """
    _validate(model, example_input)
    check_finite(model, "")
    show = sys.stderr.isatty() if progress is None else bool(progress)
    net = _baked_copy(model)
    check_finite(net, " (computed by its parametrizations)")
    x = example_input.detach().to(next(iter(net.parameters()), example_input).device, torch.float64).clone()
    check_runs(net, x)
    rows: list[NodeBound] = []
    unbounded: list[tuple[str, str]] = []
    if LeafTracer().is_leaf_module(net, ""):  # a single layer: trace it as a call, not its internals
        net = nn.Sequential(net)
    gm = None
    try:
        gm = fx.GraphModule(net, LeafTracer().trace(net))
    except TRACE_ERRORS as err:  # tracing runs user code: a failure means no graph
        upper = math.inf
        unbounded.append(("<model>", f"torch.fx could not trace the model: {type(err).__name__}: {err}"))
    else:
        record_shapes(gm, x[:1].clone())
        bar = _Progress(len(gm.graph.nodes), "certify: upper bound", show)
        rows, upper = propagate(gm, nominal=False, step=bar)
        bar.close()
        unbounded = [(r.name, r.note) for r in rows if math.isinf(r.local)]
    bar = _Progress(min(n_samples, x.shape[0]) * (power_iters + ascent_steps * max(power_iters // 4, 2)),
                    "certify: lower bound", show)
    fast = copy.deepcopy(net).float()  # the search in float32 (exact copies of the float32 weights)
    found: dict = {}
    try:
        lower, note = jacobian_lower_bound(fast, x.float(), n_samples, power_iters, ascent_steps, bar,
                                           exact_model=net, found=found)
    except RuntimeError:  # a model that casts to float64 itself cannot run in float32: search in float64
        lower, note = jacobian_lower_bound(net, x, n_samples, power_iters, ascent_steps, bar, found=found)
    bar.close()
    if gm is not None:
        check_sound(gm, rows, upper, lower, found, CertificateError)
    radii = None
    with torch.no_grad():
        out = net(x.clone())
    if isinstance(out, Tensor) and out.dim() in (1, 2) and math.isfinite(upper) and upper > 0:
        radii = certified_radius(out.float(), labels, upper)
    ratio = upper / lower if lower > 0 else math.inf
    return Certificate(upper, lower, ratio, rows, unbounded, radii, note)
