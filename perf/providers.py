"""The networks of the whole-network cases, built once per provider, and their step functions.

Providers of a network case:

* ``liptriton`` / ``liptriton-compiled``: plain ``nn.Conv2d``/``nn.Linear`` with
  ``liptriton.bjorck`` registered on each, GroupSort2 activations; converged with
  ``liptriton.parametrizations.initialize`` before ``torch.compile(fullgraph=True)``.
* ``torch-ref`` / ``torch-ref-compiled``: the same network with ``liptriton.config.force_torch()``
  held while it runs (every op on its pure-torch reference; on CPU this is liptriton's own path).
* ``deel-torchlip``: ``torchlip.SpectralConv2d``/``SpectralLinear`` + ``torchlip.GroupSort2``,
  eager (its hooks do not compile fullgraph); skipped when deel-torchlip is not installed.
* ``unconstrained`` / ``unconstrained-compiled``: the same layers without any constraint, same
  activations (liptriton's GroupSort2); ``unconstrained-relu`` for reference (ReLU, eager).

Network (c) is the drop-in user's network: 3 convs + 2 linear built from the layer classes
(``SpectralConv2d``/``SpectralLinear``/``GroupSort2``) of liptriton or of deel-torchlip, 8x8x1
inputs, binary HKR loss; its ``liptriton`` providers use ``liptriton``'s layers as a user who only
changes the import would.

Every builder takes ``device`` (the network and its data are moved there) and ``dtype``
("float32", or "bfloat16" / "float16": the forward and loss run under ``torch.autocast``).

Network (a) is the 4-conv + 2-linear network of deel-torchlip's usage page (28x28x1 inputs,
binary HKR loss). Network (b) is a ResNet-style CIFAR network (32x32x3, 10 classes): stem conv,
three stages of one residual block each (``y = (x + f(x)) / 2``, a convex combination of
1-Lipschitz maps, so the block stays 1-Lipschitz) with a stride-2 conv between stages, global
max pooling and a linear head, multiclass HKR loss. It is built by hand (``liptriton.convert``,
lipschitzify, did not exist when the suite was written).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

import liptriton

__all__ = ["NET_C_PROVIDERS", "NET_PROVIDERS", "build_network", "has_torchlip", "make_eval", "make_step", "provider_context"]

NET_PROVIDERS = [
    "liptriton",
    "liptriton-compiled",
    "torch-ref",
    "torch-ref-compiled",
    "deel-torchlip",
    "unconstrained",
    "unconstrained-compiled",
    "unconstrained-relu",
]

# network (c): the drop-in user's comparison (eager liptriton against eager deel-torchlip)
NET_C_PROVIDERS = ["liptriton", "liptriton-compiled", "deel-torchlip", "unconstrained", "unconstrained-compiled"]


def has_torchlip() -> bool:
    """True when deel-torchlip can be imported."""
    try:
        import deel.torchlip  # noqa: F401
    except ImportError:
        return False
    return True


def provider_context(provider: str) -> contextlib.AbstractContextManager:
    """The context a provider's calls run in (``force_torch`` for the torch-ref providers)."""
    if provider.startswith("torch-ref"):
        return liptriton.config.force_torch(True)
    return contextlib.nullcontext()


def _layers(kind: str) -> tuple[Callable[..., nn.Module], Callable[..., nn.Module], Callable[[], nn.Module]]:
    """(conv, linear, activation) factories of a layer family: 'torchlip', 'liptriton' (its layer
    classes), 'plain' or 'relu'."""
    if kind == "torchlip":
        from deel import torchlip

        return torchlip.SpectralConv2d, torchlip.SpectralLinear, torchlip.GroupSort2
    if kind == "liptriton":
        return liptriton.SpectralConv2d, liptriton.SpectralLinear, liptriton.GroupSort2
    act = nn.ReLU if kind == "relu" else liptriton.GroupSort2
    return nn.Conv2d, nn.Linear, act


def network_a(kind: str, width: int = 32, image: int = 28) -> nn.Module:
    """The usage-page network: 4 conv (width channels) + 2 linear, GroupSort2 between layers."""
    conv, lin, act = _layers(kind)
    return nn.Sequential(
        conv(1, width, 3, padding=1),
        act(),
        conv(width, width, 3, padding=1),
        act(),
        nn.MaxPool2d(2),
        conv(width, width, 3, padding=1),
        act(),
        conv(width, width, 3, padding=1),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        lin(width * (image // 4) ** 2, 256),
        act(),
        lin(256, 1),
    )


def network_c(kind: str, width: int = 16, image: int = 8) -> nn.Module:
    """The drop-in network: 3 convs (width, 2 width, 2 width channels) + 2 linear, GroupSort2."""
    conv, lin, act = _layers(kind)
    return nn.Sequential(
        conv(1, width, 3, padding=1),
        act(),
        conv(width, 2 * width, 3, padding=1),
        act(),
        conv(2 * width, 2 * width, 3, padding=1),
        act(),
        nn.Flatten(),
        lin(2 * width * image * image, 64),
        act(),
        lin(64, 1),
    )


class _Residual(nn.Module):
    """``(x + f(x)) / 2`` with f = conv-act-conv: 1-Lipschitz when f is."""

    def __init__(self, conv: Callable[..., nn.Module], act: Callable[[], nn.Module], c: int) -> None:
        super().__init__()
        self.f = nn.Sequential(conv(c, c, 3, padding=1), act(), conv(c, c, 3, padding=1))
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(0.5 * x + 0.5 * self.f(x))


def network_b(kind: str, widths: tuple[int, ...] = (32, 64, 128), classes: int = 10) -> nn.Module:
    """ResNet-style CIFAR network: stem, [residual block, stride-2 conv] per stage, max pool, head."""
    conv, lin, act = _layers(kind)
    layers: list[nn.Module] = [conv(3, widths[0], 3, padding=1), act()]
    for i, c in enumerate(widths):
        layers.append(_Residual(conv, act, c))
        if i + 1 < len(widths):
            layers += [conv(c, widths[i + 1], 3, stride=2, padding=1), act()]
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), lin(widths[-1], classes)]
    return nn.Sequential(*layers)


def _constrain(net: nn.Module) -> nn.Module:
    for m in list(net.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            liptriton.bjorck(m)
    return net


def build_network(
    name: str,
    provider: str,
    batch: int,
    seed: int = 0,
    image: int | None = None,
    width: int | None = None,
    device: str = "cpu",
) -> tuple[nn.Module, Tensor, Tensor]:
    """Build network ``name`` ('a', 'b' or 'c') for ``provider`` with a batch of inputs and labels.

    Args:
        name: 'a' (usage network, 28x28x1, binary labels), 'b' (CIFAR ResNet, 10 classes) or
            'c' (drop-in layer-class network, 8x8x1, binary labels).
        provider: one of :data:`NET_PROVIDERS`.
        batch: batch size.
        seed: seed of the weights and data.
        image, width: smaller inputs / first width for smoke tests (default 28, 32 or 8; 32, or
            16 for 'c').
        device: where the network and the data live.

    Returns:
        (module, inputs, targets); the module is in training mode, converged, uncompiled.

    Example:
        >>> net, x, y = build_network("a", "unconstrained", 2, image=8, width=4)
        >>> tuple(net(x).shape)
        (2, 1)
    """
    torch.manual_seed(seed)
    kind = {"deel-torchlip": "torchlip", "unconstrained-relu": "relu"}.get(provider, "plain")
    if name == "c" and provider.startswith(("liptriton", "torch-ref")):
        kind = "liptriton"  # the drop-in user: liptriton's layer classes
    width = width or (16 if name == "c" else 32)
    image = image or {"a": 28, "b": 32, "c": 8}[name]
    if name == "a":
        net = network_a(kind, width, image)
    elif name == "b":
        net = network_b(kind, (width, 2 * width, 4 * width))
    else:
        net = network_c(kind, width, image)
    if name in ("a", "c"):
        x = torch.randn(batch, 1, image, image)
        y = (torch.arange(batch) % 2).float().unsqueeze(1) * 2 - 1
    else:
        x = torch.randn(batch, 3, image, image)
        y = nn.functional.one_hot(torch.arange(batch) % 10, 10).float()  # deel-torchlip needs one-hot
    net, x, y = net.to(device), x.to(device), y.to(device)
    if provider.startswith(("liptriton", "torch-ref")):
        with provider_context(provider):
            if name != "c":
                _constrain(net)
            liptriton.parametrizations.initialize(net, x)
    return net, x, y


def _autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for "float32"."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


def _loss_fn(name: str, provider: str) -> Callable[[Tensor, Tensor], Tensor]:
    if provider == "deel-torchlip":
        from deel import torchlip

        return (
            torchlip.HKRLoss(alpha=0.9, min_margin=1.0)
            if name in ("a", "c")
            else torchlip.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)
        )
    if name in ("a", "c"):
        return liptriton.HKRLoss(alpha=0.9, min_margin=1.0)
    return liptriton.HKRMulticlassLoss(alpha=0.9, min_margin=1.0)


def make_step(
    name: str, provider: str, batch: int, device: str = "cpu", dtype: str = "float32", **sizes: int
) -> tuple[Callable[[], Tensor], nn.Module]:
    """A training step (zero_grad, forward, HKR loss, backward, Adam step) for ``provider``.

    Compiled providers compile forward + loss with ``torch.compile(fullgraph=True)`` (AOTAutograd
    compiles the backward too); the optimizer step stays eager for every provider. With a
    ``dtype`` other than "float32" the forward and the loss run under ``torch.autocast``.

    Returns:
        (step, module): ``step()`` runs one step and returns the loss; ``step.optimizer`` and
        ``step.body`` (forward + loss, compiled or not) are its parts.
    """
    net, x, y = build_network(name, provider, batch, device=device, **sizes)
    loss_fn = _loss_fn(name, provider)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def fwd_loss() -> Tensor:
        with _autocast(device, dtype):
            return loss_fn(net(x), y)

    # dynamic=False: the code object of fwd_loss is shared by every network of the process, and
    # automatic dynamic shapes on the second one hit an Inductor error (torch 2.13, CPU)
    body = (
        torch.compile(fwd_loss, fullgraph=True, dynamic=False) if provider.endswith("-compiled") else fwd_loss
    )

    def step() -> Tensor:
        with provider_context(provider):
            opt.zero_grad(set_to_none=True)
            loss = body()
            loss.backward()
            opt.step()
        return loss

    step.optimizer, step.body = opt, body  # perf/profile_step.py times the parts of a step
    return step, net


def make_eval(
    name: str, provider: str, batch: int, device: str = "cpu", dtype: str = "float32", **sizes: int
) -> tuple[Callable[[], Tensor], nn.Module]:
    """An eval forward (``eval()``, ``no_grad``, autocast to ``dtype`` unless float32) of network
    ``name`` for ``provider``.

    Returns:
        (forward, module): ``forward()`` returns the logits.
    """
    net, x, _ = build_network(name, provider, batch, device=device, **sizes)
    net.eval()
    body = torch.compile(net, fullgraph=True, dynamic=False) if provider.endswith("-compiled") else net

    def forward() -> Tensor:
        with provider_context(provider), torch.no_grad(), _autocast(device, dtype):
            return body(x)

    return forward, net
