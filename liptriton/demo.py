"""A short end-to-end example: constrain a small CNN, train it a few steps, print each layer's
measured Lipschitz bound.

Run it with ``python -m liptriton.demo`` (or ``liptriton demo``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import liptriton
from liptriton.ops.conv_operator import ConvSpec, conv_adjoint, conv_apply

__all__ = ["main", "measured_bound"]


def measured_bound(layer: nn.Module, input_shape: tuple[int, ...] | None = None, iters: int = 300) -> float:
    """Measure a constrained layer's operator norm in float64 (SVD, or power iteration on a conv).

    Args:
        layer: an ``nn.Linear`` or convolution with a liptriton parametrization.
        input_shape: (C, *spatial) of the convolution's input (ignored for Linear).
        iters: power steps for convolutions.

    Returns:
        The measured norm (a float).

    Example:
        >>> lin = liptriton.bjorck(torch.nn.Linear(8, 4))
        >>> round(measured_bound(lin), 3)
        1.0
    """
    with torch.no_grad():
        w = layer.weight.detach().double()
        if isinstance(layer, nn.Linear):
            return float(torch.linalg.matrix_norm(w, 2))
        spec = ConvSpec.from_module(layer)
        x = torch.randn(1, *input_shape, dtype=torch.float64)
        for _ in range(iters):
            x = conv_adjoint(spec, w, conv_apply(spec, w, x), tuple(input_shape[1:]))
            x = x / x.norm()
        return float(conv_apply(spec, w, x).norm())


def _model() -> nn.Sequential:
    return nn.Sequential(
        liptriton.bjorck(nn.Conv2d(1, 8, 3, padding=1)),
        nn.ReLU(),
        liptriton.spectral(nn.Conv2d(8, 8, 3, stride=2, padding=1)),
        nn.ReLU(),
        nn.Flatten(),
        liptriton.householder(nn.Linear(8 * 8 * 8, 32)),
        nn.ReLU(),
        liptriton.frobenius(nn.Linear(32, 1)),
    )


def main(argv: list[str] | None = None) -> int:
    """Train the demo model and print each layer's measured bound.

    Args:
        argv: command-line arguments (``--steps``, ``--seed``, ``--device``).

    Returns:
        The exit status: 0 when every measured bound is within k (1 + 1e-3).
    """
    parser = argparse.ArgumentParser(prog="liptriton demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device!r} is not usable here: {err}")

    torch.manual_seed(args.seed)
    model = _model().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # Two classes of 16x16 images: a bright blob left or right, with noise.
    x = torch.randn(256, 1, 16, 16, device=device) * 0.3
    y = torch.randint(0, 2, (256,), device=device)
    x[y == 1, :, 4:12, 2:7] += 1.0
    x[y == 0, :, 4:12, 9:14] += 1.0
    target = (2 * y - 1).float()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, 256, (64,), device=device)
        out = model(x[idx]).squeeze(1)
        # Hinge-KR loss of a binary 1-Lipschitz classifier (labels +-1).
        kr = -(out * target[idx]).mean()
        hinge = torch.relu(0.5 - out * target[idx]).mean()
        loss = 0.1 * kr + hinge
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == args.steps:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        acc = ((model(x).squeeze(1) > 0).long() == y).float().mean().item()
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f}s, accuracy {acc:.3f}\n")

    shapes = {0: (1, 16, 16), 2: (8, 16, 16)}
    print(f"{'layer':<8}{'type':<10}{'constraint':<14}{'k':>6}{'measured':>12}")
    ok = True
    for i, layer in enumerate(model):
        if not hasattr(layer, "parametrizations"):
            continue
        p = layer.parametrizations.weight[0]
        bound = measured_bound(layer.cpu(), shapes.get(i))
        name = type(p).__name__
        limit = p.lipschitz_bound()
        ok &= bound <= limit * (1 + 1e-3)
        print(f"{i:<8}{type(layer).__name__.replace('Parametrized', ''):<10}{name:<14}{p.k:>6.2f}{bound:>12.6f}")
    print("\nevery layer within its bound" if ok else "\nA LAYER EXCEEDS ITS BOUND")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
