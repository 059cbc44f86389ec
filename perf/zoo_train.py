"""``python -m perf.zoo_train``: a lipschitzified torchvision ResNet-18 trained on scikit-learn's digits.

The digits (8 x 8, 1797 images, 80/20 split) are upscaled to 32 x 32 (bilinear) and repeated on
3 channels. Two runs of ``--steps`` Adam steps (batch 64, seed 0):

* liptriton: ``lipschitzify(resnet18(num_classes=10), activations="groupsort", example_input=...)``
  (Björck, layers divided by their power-iteration estimate in training: ``--bound estimate``)
  trained with the multiclass HKR loss (``--alpha``, ``--margin``), then certified
  (:func:`liptriton.certify`: a proven bound, whatever the training divisor) and its certified
  accuracy at l2 radius 0.25 computed from the margins (``r = margin / (sqrt(2) upper)``);
* unconstrained: the same ResNet-18 trained with cross-entropy, certified the same way.

``--threads 1`` is the right choice on a shared 2-core machine (oversubscribed threads make CPU
convolutions many times slower): the default. The measured run: ``python -m perf.zoo_train`` (defaults).

The numbers go to stdout and, as one JSON line, to ``--out`` (default
``perf/history/zoo_train.jsonl``). docs/guide.md quotes them.

torchvision's model definitions are imported with ``tests/_torchvision.py`` (a standalone helper:
it imports neither liptriton nor the tests; see its docstring for why it is needed on CPU torch).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import liptriton
from liptriton.demo import load_digits

ROOT = Path(__file__).resolve().parent.parent
RADIUS = 0.25


def torchvision_models():
    """``torchvision.models`` through tests/_torchvision.py (see the module docstring)."""
    spec = importlib.util.spec_from_file_location("_torchvision", ROOT / "tests" / "_torchvision.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.models()


def digits32(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits split, upscaled to (N, 3, 32, 32) in [0, 1]."""
    xtr, ytr, xte, yte = load_digits(seed)

    def up(x):
        return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)

    return up(xtr), ytr, up(xte), yte


def train(model, loss_fn, xtr, ytr, steps: int, lr: float, log) -> float:
    """``steps`` Adam steps of batch 64; returns the seconds taken."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(ytr), (64,), generator=gen)
        loss = loss_fn(model(xtr[idx]), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            log(f"  step {step}: loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)")
    return time.perf_counter() - t0


def evaluate(model, xte, yte) -> dict:
    """Clean accuracy, certificate, and certified accuracy at radius 0.25."""
    model.eval()
    with torch.no_grad():
        out = model(xte)
    cert = liptriton.certify(model, xte[:8], n_samples=2, power_iters=10, ascent_steps=2)
    radii = liptriton.metrics.certified_radius(out, yte, cert.upper) if math.isfinite(cert.upper) else \
        torch.zeros(len(yte))
    correct = out.argmax(1) == yte
    return {"clean_acc": float(correct.float().mean()), "upper": cert.upper, "lower": cert.lower,
            "certified_acc_0.25": float((correct & (radii >= RADIUS)).float().mean())}


def main(argv: list[str] | None = None) -> dict:
    """Run both trainings and print / record their numbers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-3,
                        help="Adam lr of the liptriton network (the unconstrained one: 1e-3)")
    parser.add_argument("--out", default=str(ROOT / "perf" / "history" / "zoo_train.jsonl"))
    parser.add_argument("--only", choices=("liptriton", "unconstrained"), default=None)
    parser.add_argument("--bound", choices=("certified", "estimate"), default="estimate",
                        help="the layers' divisor in training (the final certificate is certify's in both cases)")
    parser.add_argument("--method", default="bjorck", help="lipschitzify's method")
    parser.add_argument("--activations", default="groupsort", help="lipschitzify's activations policy")
    parser.add_argument("--alpha", type=float, default=0.98, help="HKR alpha")
    parser.add_argument("--margin", type=float, default=0.5,
                        help="HKR min_margin (a certified radius of 0.25 needs a margin >= 0.354)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = digits32(0)
    models = torchvision_models()
    row: dict = {"steps": args.steps, "lr": args.lr, "bound": args.bound, "method": args.method,
                 "activations": args.activations, "hkr": [args.alpha, args.margin],
                 "torch": torch.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "threads": args.threads, "machine": f"{platform.machine()} {os.cpu_count()} cores",
                 "load_at_start": os.getloadavg()[0]}
    if args.only in (None, "liptriton"):
        t0 = time.perf_counter()
        lip = liptriton.lipschitzify(models.resnet18(num_classes=10), activations=args.activations,
                                     method=args.method, example_input=xtr[:2], bound=args.bound,
                                     power_iters_init=30)
        row["convert_s"] = time.perf_counter() - t0
        row["signal"] = lip.lipschitz_report.signal
        print(f"liptriton resnet18: converted in {row['convert_s']:.0f} s, signal kept {row['signal']:.3g}",
              flush=True)
        loss = liptriton.HKRMulticlassLoss(alpha=args.alpha, min_margin=args.margin)
        row["train_s"] = train(lip, loss, xtr, ytr, args.steps, args.lr, lambda m: print(m, flush=True))
        row["liptriton"] = evaluate(lip, xte, yte)
        print("liptriton:", row["liptriton"], flush=True)
    if args.only in (None, "unconstrained"):
        torch.manual_seed(0)
        net = models.resnet18(num_classes=10)
        row["unconstrained_train_s"] = train(net, torch.nn.CrossEntropyLoss(), xtr, ytr, args.steps, 1e-3,
                                             lambda m: print(m, flush=True))
        row["unconstrained"] = evaluate(net, xte, yte)
        print("unconstrained:", row["unconstrained"], flush=True)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return row


if __name__ == "__main__":
    main()
