"""End-to-end certified-robust training on scikit-learn's 8x8 digits (offline, no download).

``python -m liptriton.demo`` (or ``liptriton demo``): lipschitzify an ordinary small CNN, train
it with a multiclass HKR loss under torch.compile, and print clean accuracy, certified robust
accuracy at several l2 radii, the certificate (upper and lower bound), and a PGD l2 attack
showing that no certified prediction flips. The model is saved with its certificate to
safetensors, reloaded into the plain torch model (identical predictions checked), and a PNG
chart of certified accuracy against radius is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["main", "make_model", "load_digits", "pgd_l2", "RADII"]

RADII = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def make_model() -> nn.Module:
    """The ordinary torch CNN the demo converts (8x8 grey images, 10 classes).

    Returns:
        An ``nn.Sequential`` of plain torch layers (ReLU, average pooling, dropout).

    Examples:
        >>> make_model()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        nn.Dropout(0.0),
        nn.Linear(64, 10),
    )


def load_digits(seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's digits as tensors in [0, 1], split 80/20 with ``seed``.

    Args:
        seed: seed of the split.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images of shape (N, 1, 8, 8).

    Raises:
        SystemExit: when scikit-learn is not installed (with the install command).
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("liptriton demo needs scikit-learn: pip install 'liptriton[demo]'") from None
    data = _load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(y))
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def pgd_l2(model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, steps: int = 30) -> Tensor:
    """Projected gradient attack in l2 on the margin, each sample within its own radius ``eps``.

    Args:
        model: the classifier (eval mode).
        x: inputs.
        y: labels.
        eps: per-sample l2 budget, shape (N,).
        steps: attack steps.

    Returns:
        Adversarial inputs ``x + delta`` with ``||delta_i|| <= eps_i``.
    """
    eps = eps.view(-1, 1, 1, 1)
    delta = torch.zeros_like(x)
    step = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        (grad,) = torch.autograd.grad((other - true).sum(), delta)
        with torch.no_grad():
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta + step * g
            norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            delta = delta * torch.clamp(eps / norm.clamp_min(1e-12), max=1.0)
    return (x + delta).detach()


def _bar(done: int, total: int, text: str) -> None:
    width = 28
    fill = int(width * done / total)
    print(f"\r  [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {text}", end="", file=sys.stderr, flush=True)
    if done == total:
        print(file=sys.stderr)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="liptriton demo", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--out", default="liptriton-demo", help="output folder (default ./liptriton-demo)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-compile", action="store_true", help="train eagerly instead of torch.compile")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    try:
        args.device = torch.device(args.device)
        torch.empty(1, device=args.device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device!r} cannot be used here: {str(err).splitlines()[0]}")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        parser.error(f"--out {str(out)!r} is not a writable folder: {err.strerror or err}")
    args.out = out
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the demo; see the module docstring.

    Args:
        argv: command-line arguments (``--epochs``, ``--device``, ``--out``, ``--seed``).

    Returns:
        0 when every check passes (no certified prediction flips, the reloaded model agrees).
    """
    args = _parse(argv)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _run(args)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _run(args: argparse.Namespace) -> int:
    import liptriton
    from liptriton.metrics import certified_radius, certified_robust_accuracy

    torch.manual_seed(args.seed)
    device, start = args.device, time.perf_counter()
    x_train, y_train, x_test, y_test = (t.to(device) for t in load_digits(args.seed))
    print(f"digits: {len(y_train)} train / {len(y_test)} test images of 8x8, 10 classes")

    model = liptriton.lipschitzify(make_model(), k=1.0, example_input=x_train[:2]).to(device)
    report = getattr(model, "lipschitz_report", None)
    if report is not None:
        print(report)
    liptriton.parametrizations.initialize(model, x_train[:2])
    loss_fn = liptriton.HKRMulticlassLoss(alpha=0.98, min_margin=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def train_step(xb: Tensor, yb: Tensor) -> Tensor:
        loss = loss_fn(model(xb), torch.nn.functional.one_hot(yb, 10).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    step_fn = train_step if args.no_compile else torch.compile(train_step)
    batch = 64
    n_batches = (len(y_train) + batch - 1) // batch
    print(f"training {args.epochs} epochs ({'eager' if args.no_compile else 'torch.compile'}) on {device}")
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(len(y_train), device=device)
        total = 0.0
        for i in range(n_batches):
            idx = perm[i * batch:(i + 1) * batch]
            if len(idx) < batch:  # keep shapes static for the compiled step
                continue
            total += float(step_fn(x_train[idx], y_train[idx]))
            _bar(i + 1, n_batches, f"epoch {epoch} loss {total / (i + 1):.4f}")
        _bar(n_batches, n_batches, f"epoch {epoch} done")
    print(f"trained in {time.perf_counter() - start:.1f}s")

    t_eval = time.perf_counter()
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    clean = float((logits.argmax(1) == y_test).float().mean())
    cert = liptriton.certify(model, x_test[:256], progress=False)
    upper = cert.upper
    cra = certified_robust_accuracy(logits, y_test, list(RADII), lipschitz_constant=upper)
    print(f"\nclean accuracy: {clean:.4f}   (evaluated and certified in {time.perf_counter() - t_eval:.1f}s)")
    print(f"certificate: upper {upper:.6f}  lower {cert.lower:.6f}  ratio {cert.ratio:.3f}")
    print(f"{'l2 radius':>10} | certified accuracy")
    for r, a in zip(RADII, cra.tolist()):
        print(f"{r:>10.2f} | {a:.4f}")

    radii = certified_radius(logits, y_test, lipschitz_constant=upper)
    certified = radii > 0
    x_adv = pgd_l2(model, x_test[certified], y_test[certified], 0.999 * radii[certified])
    with torch.no_grad():
        flipped = int((model(x_adv).argmax(1) != y_test[certified]).sum())
    print(f"PGD l2 attack within each certified radius: {flipped} of {int(certified.sum())} certified "
          f"predictions flipped")

    path = args.out / "digits-cnn.safetensors"
    liptriton.save(model, path, example_input=x_test[:256])
    plain = make_model().to(device).eval()  # the user's own architecture: the file is written for it
    liptriton.load(path, plain)
    with torch.no_grad():
        same = bool(torch.equal(plain(x_test).argmax(1), logits.argmax(1)))
        gap = float((plain(x_test) - logits).abs().max())
    meta = liptriton.load_metadata(path)
    print(f"saved {path} ({os.path.getsize(path)} bytes, certified bound in metadata: {meta.get('bound')})")
    print(f"reloaded into make_model(), the plain torch model: identical predictions: {same} "
          f"(max logit gap {gap:.2e})")

    chart = args.out / "certified_accuracy.png"
    _plot(chart, RADII, cra.tolist(), clean)
    print(f"chart: {chart}")
    print(f"total time {time.perf_counter() - start:.1f}s")
    ok = flipped == 0 and same
    print("all checks passed" if ok else "A CHECK FAILED")
    return 0 if ok else 1


def _plot(path: Path, radii, accuracies, clean: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(radii, accuracies, marker="o", label="certified")
    ax.axhline(clean, color="grey", linestyle="--", label="clean")
    ax.set_xlabel("l2 radius")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("digits: certified robust accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
