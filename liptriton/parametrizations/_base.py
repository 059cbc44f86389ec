"""What every Lipschitz parametrization shares: validation, float32 math, the eval cache,
the matrix view of a layer's weight, and the state that tracks a convolution's operator norm."""

from __future__ import annotations

import math
import functools

import torch
from torch import Tensor, nn

from liptriton.ops.conv_operator import ConvSpec, conv_operator_norm, conv_subspace_iteration
from liptriton.ops.power_iteration import power_iteration, spectral_sigma

__all__ = [
    "LipschitzParametrization", "WeightLayout", "ConvNormState", "MatrixNormState", "register",
    "initialize", "check_positive", "check_iters",
]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def check_positive(owner: str, arg: str, value: float) -> float:
    """Return ``float(value)`` or raise a ValueError naming ``owner`` and ``arg``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a finite number > 0, got {value!r}")
    return float(value)


def check_iters(owner: str, arg: str, value: int | None, optional: bool = False) -> int | None:
    """Return ``value`` if it is an int >= 1 (or None when ``optional``), else raise a ValueError
    naming ``owner`` and ``arg``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {arg} must be an integer >= 1, got {value!r}")
    return value


class WeightLayout:
    """How a layer's weight is seen as matrices, and whether it is a convolution operator.

    Dense weights are one (m, n) matrix. A convolution weight is reshaped per group into
    ``groups`` matrices of shape (out/groups, in/groups * prod(kernel)) (for transposed
    convolutions, dim 0 and dim 1 swap roles), as a batch (groups, m, n).

    Args:
        module: the layer that owns the weight.
        name: the name of the weight tensor.
        owner: name used in error messages (e.g. "liptriton.bjorck").

    Examples:
        >>> lay = WeightLayout(torch.nn.Conv2d(4, 6, 3, groups=2), "weight", "demo")
        >>> lay.batch_shape
        (2, 3, 18)
    """

    def __init__(self, module: nn.Module, name: str, owner: str) -> None:
        mod = type(module).__name__
        if not isinstance(module, nn.Module):
            raise TypeError(f"{owner}: expected an nn.Module, got {type(module).__name__}")
        tensor = getattr(module, name, None) if isinstance(name, str) else None
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{owner}: module {mod} has no tensor named {name!r} (expected e.g. 'weight')")
        if not tensor.is_floating_point():
            raise TypeError(f"{owner}: {mod}.{name} must be a floating-point tensor, got dtype {tensor.dtype}")
        if isinstance(tensor, nn.parameter.UninitializedParameter):
            raise ValueError(f"{owner}: {mod}.{name} is not initialized yet (lazy module): run one forward first")
        self.shape = tuple(tensor.shape)
        self.spec: ConvSpec | None = None
        if isinstance(module, _CONV_TYPES) and name == "weight":
            self.spec = ConvSpec.from_module(module)
            groups = self.spec.groups
            rows = self.shape[0] // groups
            self.batch_shape = (groups, rows, math.prod(self.shape[1:]))
        elif tensor.dim() == 2:
            self.batch_shape = (1, *self.shape)
        else:
            raise ValueError(
                f"{owner}: unsupported {mod}.{name} of shape {self.shape}: expected a 2-D weight or the "
                "weight of nn.Conv1d/2d/3d or nn.ConvTranspose1d/2d/3d"
            )

    @property
    def is_conv(self) -> bool:
        """True when the weight is applied as a convolution."""
        return self.spec is not None

    def to_batch(self, w: Tensor) -> Tensor:
        """View the weight as the batch of matrices (groups, m, n)."""
        return w.reshape(self.batch_shape)

    def from_batch(self, b: Tensor) -> Tensor:
        """Inverse of :meth:`to_batch`."""
        return b.reshape(self.shape)


class ConvNormState(nn.Module):
    """Warm-started block power iteration on a convolution operator (input-shaped vectors).

    The state is a basis of ``BLOCK`` input-shaped vectors (buffer ``x``, shape
    (BLOCK, C_in, *spatial)) rotated by Rayleigh-Ritz after every update, ``x[0]`` being the
    estimate of the top right singular vector; the norm estimate is ``||A x[0]||``. On an
    n x n grid the spectrum of a convolution is dense near its top and, during training, the
    top singular vector swaps with close ones: a single warm-started vector then lags for many
    steps (measured on a 4->6 stride-2 transposed conv at Adam lr 1e-3: 1.4e-2 relative
    underestimate after 20 steps, even with 3 steps per forward), while the 8-vector basis with
    one block step per forward stays within 1e-3.

    The input size is learned from the layer's forward (see :meth:`observe`); until then a
    default size is used. When a larger input is seen, the basis is re-initialized at that
    size and iterated ``n_iters_init`` times at the next evaluation.

    Args:
        spec: the operator geometry.
        in_channels: channels of the operator's input.
        input_size: spatial size to start with (defaults to 16 per dimension, 8 in 3-D).
        n_iters: block steps per training forward (None: 1).
        n_iters_init: block steps on a fresh basis.
        device: where the basis lives (the weight's device).
    """

    DEFAULT_ITERS = 1
    BLOCK = 8  # vectors tracked (top-p subspace, rotated by Rayleigh-Ritz)

    def __init__(self, spec: ConvSpec, in_channels: int, input_size: tuple[int, ...] | None,
                 n_iters: int | None, n_iters_init: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.n_iters = n_iters or self.DEFAULT_ITERS
        self.n_iters_init = n_iters_init
        size = tuple(input_size) if input_size is not None else (16 if spec.ndim < 3 else 8,) * spec.ndim
        if len(size) != spec.ndim or any(s < 1 for s in size):
            raise ValueError(f"input_size must have {spec.ndim} positive entries, got {input_size!r}")
        self.register_buffer("x", self._fresh(in_channels, size, device or torch.device("cpu")))
        self.fresh = True
        self.observed = input_size is not None
        self.deferred = False

    @classmethod
    def _fresh(cls, channels: int, size: tuple[int, ...], device: torch.device) -> Tensor:
        x = torch.randn(cls.BLOCK, channels, *size, device=device)
        return x / x.flatten(1).norm(dim=1).reshape(-1, *([1] * len(size) + [1]))

    @property
    def input_size(self) -> tuple[int, ...]:
        """Spatial size at which the operator norm is tracked."""
        return tuple(self.x.shape[2:])

    def observe(self, inp: Tensor) -> None:
        """Track the spatial size of ``inp``: the first one seen, then any larger one.

        The norm of a zero-padded convolution grows with the input size, so the state keeps
        the largest size seen (the bound then holds for every input up to it).
        """
        size = tuple(inp.shape[2:])
        if len(size) != self.spec.ndim or (self.observed and size == self.input_size):
            return
        if not self.observed:
            self.observed = True
            if size == self.input_size:
                return
            grown = size
        elif any(s > t for s, t in zip(size, self.input_size)):
            grown = tuple(max(s, t) for s, t in zip(size, self.input_size))
        else:
            return
        self.x = self._fresh(self.x.shape[1], grown, self.x.device)
        self.fresh, self.observed = True, True

    def norm(self, w: Tensor, update: bool) -> Tensor:
        """Return the operator-norm estimate of ``w`` (differentiable), iterating first if asked.

        Args:
            w: the convolution weight (float32).
            update: advance the power iteration (training mode), in place under no_grad.
        """
        if self.deferred:  # registration's shape check: converge later, at the real input size
            return conv_operator_norm(self.spec, w, self.x[:1].float().clone())
        if update or self.fresh:
            steps = self.n_iters_init if self.fresh else self.n_iters
            with torch.no_grad():
                self.x.copy_(conv_subspace_iteration(self.spec, w, self.x.float(), steps))
            self.fresh = False
        # clone: the next in-place update must not touch what this graph saved for backward
        return conv_operator_norm(self.spec, w, self.x[:1].float().clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "x"
        if key in state_dict and state_dict[key].shape != self.x.shape:
            self.x = torch.empty_like(state_dict[key], device=self.x.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if key in state_dict:
            self.fresh, self.observed = False, True


class LipschitzParametrization(nn.Module):
    """Base class: computes the constrained weight in float32 (autocast off) and caches it in eval.

    In eval mode, outside torch.compile, the constrained weight is computed once and reused
    while the underlying parameter is unchanged (same storage and version counter). The
    cache is used when no gradient can flow to the parameter (``no_grad``, or a frozen
    parameter); otherwise the weight is recomputed so that gradients stay exact.

    Switching to eval mode (``model.eval()``) converges the power-iteration state on the
    current weight (``n_iters_init`` more steps from the warm state, outside any compiled
    region): during training the state advances a few steps per forward and lags behind the
    optimizer, which can push up singular directions it does not track yet; eval outputs,
    exports and certificates then use a converged estimate.

    Subclasses implement :meth:`compute` and :meth:`lipschitz_bound`.
    """

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k
        self._cache: Tensor | None = None
        self._cache_key: tuple | None = None
        # [ParametrizationList] when this is its first parametrization (set by register()): a
        # list, so that nn.Module does not register it, and deepcopy maps it to the copy's list.
        self._owner: list[nn.Module] = []

    def lipschitz_bound(self) -> float:
        """Return the guaranteed l2 Lipschitz constant of the operator the layer applies."""
        return self.k

    def compute(self, w: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, w: Tensor) -> Tensor:
        cacheable = (
            not self.training
            and not torch.compiler.is_compiling()
            and w.grad_fn is None
            and not (torch.is_grad_enabled() and w.requires_grad)
        )
        if cacheable:
            key = (w._version, w.data_ptr(), w.dtype, w.device, w.shape)
            if self._cache is not None and self._cache_key == key:
                return self._cache
        with torch.autocast(device_type=w.device.type, enabled=False):
            out = self.compute(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w).to(w.dtype)
        if cacheable:
            self._cache, self._cache_key = out.detach(), key
        else:
            self._cache = None
        return out

    def train(self, mode: bool = True) -> LipschitzParametrization:
        self._cache = None
        if self.training and not mode:
            self.converge()
        return super().train(mode)

    def converge(self) -> None:
        """Run extra power-iteration steps on the current weight (no gradient, in place)."""
        original = getattr(self._owner[0], "original", None) if self._owner else None
        states = [m for m in (getattr(self, "state", None), getattr(self, "conv", None)) if m is not None]
        if original is None or not states or torch.compiler.is_compiling():
            return
        saved = [m.fresh for m in states]
        for m in states:
            m.fresh = True
        try:
            with torch.no_grad(), torch.autocast(device_type=original.device.type, enabled=False):
                self.compute(original.float())
        finally:
            for m, fresh in zip(states, saved):
                m.fresh = fresh and m.fresh


class MatrixNormState(nn.Module):
    """Warm-started power iteration on a batch of matrices (persistent u and v buffers).

    Args:
        batch_shape: (B, m, n), the shape of the matrices.
        n_iters: power steps per training forward (None: 1).
        n_iters_init: power steps on fresh vectors (at the first evaluation).
        device: where the buffers live.
    """

    def __init__(self, batch_shape: tuple[int, int, int], n_iters: int | None, n_iters_init: int,
                 device: torch.device | None = None) -> None:
        super().__init__()
        b, m, n = batch_shape
        self.n_iters = n_iters or 1
        self.n_iters_init = n_iters_init
        u, v = torch.randn(b, m, device=device), torch.randn(b, n, device=device)
        self.register_buffer("u", u / u.norm(dim=-1, keepdim=True))
        self.register_buffer("v", v / v.norm(dim=-1, keepdim=True))
        self.fresh = True

    def norm(self, wb: Tensor, update: bool) -> Tensor:
        """Return sigma_max estimates (B,) of ``wb`` (differentiable), iterating first if asked."""
        if update or self.fresh:
            steps = self.n_iters_init if self.fresh else self.n_iters
            with torch.no_grad():
                u, v = power_iteration(wb.detach(), self.u.float(), self.v.float(), steps)
                self.u.copy_(u)
                self.v.copy_(v)
            self.fresh = False
        # clone: the next in-place update must not touch what this graph saved for backward
        return spectral_sigma(wb, self.u.float().clone(), self.v.float().clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "u" in state_dict:
            self.fresh = False


def register(module: nn.Module, name: str, parametrization: LipschitzParametrization,
             layout: WeightLayout) -> nn.Module:
    """Register ``parametrization`` on ``module.name``, converge its matrix power iteration now
    (so that torch.compile never traces the long first iteration), and, for convolutions, add
    the hook that tells the operator-norm state the input size."""
    from torch.nn.utils import parametrize

    conv_state = getattr(parametrization, "conv", None)
    if isinstance(conv_state, ConvNormState):
        conv_state.deferred = True  # register_parametrization evaluates once; do not converge yet
    try:
        parametrize.register_parametrization(module, name, parametrization)
        plist = getattr(module.parametrizations, name)
        if len(plist) == 1:  # the first parametrization sees the original tensor itself
            parametrization._owner = [plist]
    finally:
        if isinstance(conv_state, ConvNormState):
            conv_state.deferred = False
    state = getattr(parametrization, "state", None)
    if isinstance(state, MatrixNormState):
        original = getattr(module.parametrizations, name).original
        with torch.no_grad():
            state.norm(layout.to_batch(original.float()), update=True)
    observed = module.__dict__.setdefault("_liptriton_observed", set())
    if isinstance(conv_state, ConvNormState) and name not in observed:
        # A partial of a module-level function (no closure over this state): a deep copy of the
        # module then observes its own states, not the original's.
        module.register_forward_pre_hook(functools.partial(_observe_input, name))
        observed.add(name)
    return module


def _observe_input(name: str, module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: tell every conv operator-norm state of ``module.<name>`` the input size."""
    plist = getattr(getattr(module, "parametrizations", None), name, None)
    if plist is None or not args or not isinstance(args[0], Tensor):
        return  # parametrization removed since, or no tensor input
    for p in plist:
        conv = getattr(p, "conv", None)
        if isinstance(conv, ConvNormState):
            conv.observe(args[0])


def initialize(model: nn.Module, *example_inputs: Tensor) -> nn.Module:
    """Run one forward (eval mode, no_grad) so every constrained layer learns its input size and
    converges its power iteration; call it before ``torch.compile``.

    Without it, the first forward of a convolution converges its operator-norm state
    (``n_iters_init`` block steps), and under torch.compile those steps are traced into the
    first graph (a long compile, then one recompile).

    Args:
        model: a model with liptriton parametrizations.
        example_inputs: inputs of the real size.

    Returns:
        ``model``, in the mode it had.

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.spectral(torch.nn.Conv2d(1, 4, 3)))
        >>> net = liptriton.parametrizations.initialize(net, torch.randn(1, 1, 8, 8))
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(*example_inputs)
    model.train(was_training)
    return model
