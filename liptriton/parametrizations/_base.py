"""What every Lipschitz parametrization shares: validation, the matrix view of a layer's
weight, float32 math and the eval cache (the registration: :mod:`._register`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from liptriton.bounds.conv_operator import ConvSpec
from liptriton.parametrizations._certified import CertifiedConvNorm, CertifiedMatrixNorm
from liptriton.parametrizations._state import ConvNormState, MatrixNormState

__all__ = [
    "LipschitzParametrization", "WeightLayout", "ConvNormState", "MatrixNormState", "CertifiedConvNorm",
    "CertifiedMatrixNorm", "make_conv_state", "make_matrix_state",
]

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


# Lanczos steps of a fresh certified state. The certificate converges with its Krylov space (and
# then refines by inverse iteration), not like power iteration: 32 steps give the same bound as 200
# (measured on ResNet convolutions) at a fraction of the cost, which grows with the square of the
# steps (full reorthogonalization) on each of the top 16 frequency blocks. The one cap of fresh steps.
CERTIFIED_INIT_STEPS = 32


def make_conv_state(bound: str, layout: WeightLayout, in_channels: int | None, input_size: tuple[int, ...] | None,
                    n_iters: int | None, n_iters_init: int, device) -> ConvNormState:
    """The operator-norm state of a convolution: certified (default; at most
    :data:`CERTIFIED_INIT_STEPS` Lanczos steps when fresh) or estimate-only."""
    if bound == "estimate":
        return ConvNormState(layout.spec, in_channels, input_size, n_iters, n_iters_init, device)
    return CertifiedConvNorm(layout.spec, layout.shape, in_channels, input_size, n_iters,
                             min(n_iters_init, CERTIFIED_INIT_STEPS), device)


def make_matrix_state(bound: str, layout: WeightLayout, n_iters: int | None, n_iters_init: int,
                      device) -> nn.Module:
    """The spectral-norm state of a dense weight: certified (default; at most
    :data:`CERTIFIED_INIT_STEPS` Lanczos steps when fresh) or estimate-only."""
    if bound == "estimate":
        return MatrixNormState(layout.batch_shape, n_iters, n_iters_init, device)
    return CertifiedMatrixNorm(layout.batch_shape, n_iters, min(n_iters_init, CERTIFIED_INIT_STEPS), device)


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
        if isinstance(tensor, nn.parameter.UninitializedParameter):
            raise ValueError(f"{owner}: {mod}.{name} is not initialized yet (lazy module): run one forward first")
        if not tensor.is_floating_point():
            raise TypeError(f"{owner}: {mod}.{name} must be a floating-point tensor, got dtype {tensor.dtype}")
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


def _key(w: Tensor) -> tuple:
    """What identifies the tensor an eval weight was computed from (storage, version, dtype, ...)."""
    return (w._version, w.data_ptr(), w.dtype, w.device, w.shape)


class LipschitzParametrization(nn.Module):
    """Base class: computes the constrained weight in float32 (autocast off) and caches it in eval.

    Eval mode costs nothing extra. Switching to eval (``model.eval()``) converges the
    power-iteration state on the current weight (``n_iters_init`` more steps from the warm
    state: during training the state advances a few steps per forward and lags behind the
    optimizer, which can push up singular directions it does not track yet) and computes the
    constrained weight once. In eval mode, when no gradient can flow to the parameter
    (``no_grad``, or a frozen parameter), that weight is reused: eagerly while the parameter is
    unchanged (same storage and version counter; otherwise it is recomputed and the cache
    updated in place), and inside ``torch.compile`` always (a compiled graph cannot check the
    version: after changing parameters in eval mode, run one eager forward or call
    ``model.eval()`` again). With gradients enabled the weight is recomputed, so gradients stay
    exact.

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
        """Return the l2 Lipschitz constant of the operator the layer applies (``k``).

        It is an upper bound at every forward, in training too, with the default
        ``bound="certified"`` and for the constraints without an estimate (Frobenius, a dense
        Björck or Householder weight). With ``bound="estimate"`` (Spectral; the convolution
        operator of Björck and Householder) the divisor is a power-iteration estimate from
        below: the bound holds once it has converged (eval mode, export), not during training.
        """
        return self.k

    def compute(self, w: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _compute(self, w: Tensor) -> Tensor:
        with torch.autocast(device_type=w.device.type, enabled=False):
            return self.compute(w.float() if w.dtype in (torch.float16, torch.bfloat16) else w).to(w.dtype)

    def _store(self, w: Tensor, out: Tensor) -> Tensor:
        """Keep ``out`` as the eval weight of parameter ``w`` (in place when the cache exists, so
        that compiled graphs reading it see the new value)."""
        cache = self._cache
        out = out.detach()
        if cache is not None and cache.shape == out.shape and cache.dtype == out.dtype and cache.device == out.device:
            cache.copy_(out)
        else:
            self._cache = cache = out.clone()
        self._cache_key = _key(w)
        return cache

    def _note_mode(self) -> None:
        """Tensors that this parametrization and its states create under ``torch.inference_mode``
        (a first forward at a new input size, the eval cache) are inference tensors, which
        cannot be updated in place outside it: the first call outside inference mode after one
        inside replaces them by normal copies (one flag check per call otherwise)."""
        if torch.compiler.is_compiling():
            return
        if torch.is_inference_mode_enabled():
            self._inference_seen = True
        elif getattr(self, "_inference_seen", False):
            self._inference_seen = False
            for mod in self.modules():
                for name, buf in mod._buffers.items():
                    if buf is not None and buf.is_inference():
                        mod._buffers[name] = buf.clone()
            if self._cache is not None and self._cache.is_inference():
                self._cache = self._cache.clone()

    def forward(self, w: Tensor) -> Tensor:
        self._note_mode()
        if self.training or (torch.is_grad_enabled() and w.requires_grad) or w.grad_fn is not None:
            return self._compute(w)
        cache = self._cache
        if torch.compiler.is_compiling():
            if cache is not None and cache.shape == w.shape and cache.dtype == w.dtype and cache.device == w.device:
                return cache
            return self._compute(w)
        if cache is not None and self._cache_key == _key(w):
            return cache
        return self._store(w, self._compute(w))

    def train(self, mode: bool = True) -> LipschitzParametrization:
        was_training = self.training
        super().train(mode)
        if was_training and not mode:
            self.converge()  # in eval mode already: the eval weight uses the eval iteration counts
        elif mode:
            self._cache_key = None  # training changes the parameters: recompute in the next eval
        return self

    def keep_cache_of(self, source: LipschitzParametrization, w: Tensor, source_w: Tensor) -> bool:
        """Take over ``source``'s eval weight, if it is valid for ``source_w``, as valid for ``w``.

        For a deep copy (``self``, receiving ``w``) of an eval-mode parametrization whose cached
        weight is up to date: the copy then bakes the same weight without recomputing it
        (certify bakes a copy of the model: the certificate of every convolution again, before).

        Args:
            source: the parametrization this one is a copy of.
            w: the tensor this parametrization receives (the copy's original).
            source_w: the tensor ``source`` receives.

        Returns:
            True when the cache was taken over (same values, shape and dtype, ``source`` in eval).
        """
        cache = self._cache
        if (source.training or self.training or cache is None or source._cache is None
                or source._cache_key != _key(source_w) or cache.shape != source._cache.shape
                or w.shape != source_w.shape or w.dtype != source_w.dtype or not torch.equal(w, source_w)
                or not torch.equal(cache, source._cache)):
            return False
        self._cache_key = _key(w)
        return True

    def invalidate(self) -> None:
        """Forget the cached eval weight (after a change the version counter cannot see, e.g. of ``k``
        or of the iteration state loaded from a file)."""
        self._cache, self._cache_key = None, None

    def set_k(self, k: float) -> None:
        """Make the layer ``k``-Lipschitz from now on (the next forward uses the new ``k``)."""
        self.k = k
        self.invalidate()

    def converge(self, w: Tensor | None = None, steps: int | None = None) -> None:
        """Converge the iteration state on the weight and cache the eval weight (no gradient).

        The one convergence of a parametrization: called when the model switches to eval (``w``
        None: the layer's own parameter; a convolution that saw no input yet converges at its
        first forward instead), and by export (``w`` given: the input of this parametrization,
        converged even at a convolution's default input size; ``steps`` power steps, default
        each state's ``n_iters_init``).

        Args:
            w: the tensor this parametrization receives (None: the registered original).
            steps: power steps from the current state (None: ``n_iters_init``).
        """
        self._note_mode()
        explicit = w is not None
        if w is None:
            w = getattr(self._owner[0], "original", None) if self._owner else None
        conv = getattr(self, "conv", None)
        if w is None or torch.compiler.is_compiling() or (not explicit and conv is not None and not conv.observed):
            return
        self._store(w, self._converged(w, steps))

    def _converged(self, w: Tensor, steps: int | None) -> Tensor:
        """The eval weight computed with converged states (subclasses add their own eval choices)."""
        return self.converge_states(w, steps)

    def converge_states(self, original: Tensor, steps: int | None = None) -> Tensor:
        """Run ``steps`` (default: each state's ``n_iters_init``) power steps on the weight and
        return the constrained weight computed with the converged state (no gradient)."""
        states = [m for m in (getattr(self, "state", None), getattr(self, "conv", None)) if m is not None]
        saved = [(m.fresh, m.n_iters_init) for m in states]
        for m in states:
            m.fresh, m.n_iters_init = True, steps or m.n_iters_init
        try:
            with torch.no_grad():
                return self._compute(original)
        finally:
            for m, (_, n_init) in zip(states, saved):
                m.n_iters_init = n_init
