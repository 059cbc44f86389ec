"""Random small models for the certify fuzz test, and an independent lower bound of their
Lipschitz constant (no liptriton code): the exact Jacobian norm (float64 SVD of the full
Jacobian at sample points) and secants between nearby inputs, climbed by random search.

A model is a random program of steps over a list of values (the input first); every step
reads earlier values and appends one. Steps: Conv2d, Linear, pooling (modules and functions),
activations (GroupSort2 included), residual sums (with broadcasting and alpha), differences,
cat, flatten / reshape / transpose, scalar and constant-tensor products (with broadcasting),
writes in place (``mul_``, ``relu_``: later steps reading the written value see the write),
clamp / maximum / minimum with tensor bounds, where / masked_fill with constant masks,
constant indexing with repeats, float casts and (rarely) quantizing integer casts.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

import liptriton


class Program(nn.Module):
    """Runs ``steps``: each is (op, input indices, argument); the last value, flattened, is the output."""

    def __init__(self, steps: list[tuple[str, tuple[int, ...], object]], layers: dict[str, nn.Module],
                 consts: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.steps = steps
        self.layers = nn.ModuleDict(layers)
        for name, t in consts.items():
            self.register_buffer(name, t)

    def forward(self, x):
        vals = [x]
        for i, (op, ins, arg) in enumerate(self.steps):
            a = vals[ins[0]]
            b = vals[ins[1]] if len(ins) > 1 else None
            key = f"s{i}"
            vals.append(_apply(self, op, key, a, b, arg))
        return vals[-1].flatten(1)


def _apply(m: Program, op: str, key: str, a, b, arg):
    if op in ("module",):
        return m.layers[key](a)
    if op == "relu":
        return torch.relu(a)
    if op == "tanh":
        return a.tanh()
    if op == "sigmoid":
        return torch.sigmoid(a)
    if op == "leaky":
        return F.leaky_relu(a, arg)
    if op == "abs":
        return a.abs()
    if op == "gelu":
        return F.gelu(a)
    if op == "fmaxpool":
        return F.max_pool2d(a, arg[0], arg[1])
    if op == "favgpool":
        return F.avg_pool2d(a, arg[0], arg[1])
    if op == "flatten":
        return a.reshape(a.shape[0], -1)
    if op == "unflatten":
        return a.view(a.shape[0], -1, 1, 1)
    if op == "transpose":
        return a.transpose(2, 3)
    if op == "scale":
        return a * arg
    if op == "rscale":
        return arg * a
    if op == "divide":
        return a / arg
    if op == "tensor_mul":
        return a * getattr(m, key)
    if op == "tensor_div":
        return a / getattr(m, key)
    if op == "add":
        return a + b
    if op == "add_alpha":
        return torch.add(a, b, alpha=arg)
    if op == "sub":
        return a - b
    if op == "iadd":
        c = a * 1.0
        c += b
        return c
    if op == "cat":
        return torch.cat([a, b], dim=1)
    if op == "clamp_min_t":
        return torch.clamp(a, min=b)
    if op == "clamp_both_t":
        return a.clamp(min=b, max=b + getattr(m, key))
    if op == "clamp_s":
        return torch.clamp(a, -arg, arg)
    if op == "maximum":
        return torch.maximum(a, b)
    if op == "minimum":
        return torch.minimum(a, b)
    if op == "max_binary":
        return torch.max(a, b)
    if op == "where":
        return torch.where(getattr(m, key), a, b)
    if op == "masked_fill":
        return a.masked_fill(getattr(m, key), arg)
    if op == "index":
        return a[:, arg]
    if op == "mul_inplace":  # later steps reading the same value see the write
        return a.mul_(arg)
    if op == "relu_inplace":
        return a.relu_()
    if op == "double":
        return a.double()
    if op == "quantize":
        return (a * arg).to(torch.int64).to(torch.float64) / arg
    if op == "round":
        return torch.round(a * arg) / arg
    raise ValueError(op)


def _scaled(layer: nn.Module, rng: random.Random) -> nn.Module:
    with torch.no_grad():
        layer.weight.mul_(rng.choice([0.3, 1.0, 2.0, 4.0]))
    return layer.double()


def random_program(rng: random.Random, quantize: float = 0.04) -> tuple[Program, tuple[int, ...]]:
    """A random model and its input shape (without batch)."""
    c, h = rng.choice([1, 2, 3]), rng.choice([3, 4, 5])
    shapes: list[tuple[int, ...]] = [(c, h, h)]
    steps: list = []
    layers: dict[str, nn.Module] = {}
    consts: dict[str, torch.Tensor] = {}
    for i in range(rng.randint(2, 7)):
        key = f"s{i}"
        j = rng.randrange(len(shapes))
        s = shapes[j]
        same = [k for k, t in enumerate(shapes) if t == s and k != j]
        # operands of the same shape, or with one channel (broadcast against s)
        partners = same + [k for k, t in enumerate(shapes) if len(t) == len(s) == 3 and t[0] == 1 and t[1:] == s[1:]
                           and k != j]
        choices = ["relu", "tanh", "sigmoid", "leaky", "abs", "gelu", "scale", "rscale", "divide", "tensor_mul",
                   "tensor_div", "clamp_s", "double", "masked_fill", "index", "groupsort"]
        if len(s) == 3:
            choices += ["conv", "conv", "flatten", "maxpool", "avgpool", "fmaxpool", "favgpool", "gap"]
            if s[1] == s[2]:
                choices.append("transpose")
        else:
            choices += ["linear", "linear", "unflatten"]
        if j > 0:  # never write into the model input
            choices += ["mul_inplace", "relu_inplace"]
        if partners:
            choices += ["add", "add_alpha", "sub", "iadd", "clamp_min_t", "clamp_both_t", "maximum", "minimum",
                        "max_binary", "where", "cat"]
        op = rng.choice(choices)
        if rng.random() < quantize:
            op = rng.choice(["quantize", "round"])
        ins: tuple[int, ...] = (j,)
        arg: object = None
        out = s
        if op in ("add", "add_alpha", "sub", "iadd", "clamp_min_t", "clamp_both_t", "maximum", "minimum",
                  "max_binary", "where", "cat"):
            k = rng.choice(partners)
            t = shapes[k]
            if op == "cat":
                if t != s:
                    op = "add"
                else:
                    out = (s[0] + t[0], *s[1:])
            ins = (j, k)
            arg = rng.choice([0.5, -2.0, 3.0]) if op == "add_alpha" else None
            if op == "where":
                consts[key] = torch.rand(s) > 0.5
            if op == "clamp_both_t":
                consts[key] = torch.rand(s, dtype=torch.float64)
        if op == "conv":
            k_, st, p = rng.choice([1, 2, 3]), rng.choice([1, 2]), rng.choice([0, 1])
            if s[1] + 2 * p < k_:
                k_ = 1
            co = rng.choice([1, 2, 3, 4])
            layers[key] = _scaled(nn.Conv2d(s[0], co, k_, stride=st, padding=p), rng)
            hh = (s[1] + 2 * p - k_) // st + 1
            op, out = "module", (co, hh, hh)
        elif op == "linear":
            d = rng.choice([1, 2, 3, 5, 8])
            layers[key] = _scaled(nn.Linear(s[0], d), rng)
            op, out = "module", (d,)
        elif op in ("maxpool", "avgpool", "fmaxpool", "favgpool"):
            kk = min(rng.choice([2, 3]), s[1])
            st = rng.choice([1, 2])
            if op == "maxpool":
                layers[key], op = nn.MaxPool2d(kk, st), "module"
            elif op == "avgpool":
                layers[key], op = nn.AvgPool2d(kk, st), "module"
            else:
                arg = (kk, st)
            hh = (s[1] - kk) // st + 1
            out = (s[0], hh, hh)
        elif op == "gap":
            layers[key], op, out = nn.AdaptiveAvgPool2d(1), "module", (s[0], 1, 1)
        elif op == "groupsort":
            if s[0] % 2:
                op = "relu"
            else:
                layers[key], op = liptriton.GroupSort2(), "module"
        elif op == "flatten":
            out = (s[0] * s[1] * s[2],)
        elif op == "unflatten":
            out = (s[0], 1, 1)
        elif op in ("scale", "rscale", "divide", "mul_inplace"):
            arg = rng.choice([-3.0, -0.5, 0.25, 2.0, 7.0])
        elif op == "leaky":
            arg = rng.choice([0.01, 0.3, 2.5])
        elif op == "clamp_s":
            arg = rng.choice([0.1, 0.5, 2.0])
        elif op in ("tensor_mul", "tensor_div"):
            options = [s, (1,) * len(s)] + ([(s[0], 1, 1), (1, *s[1:])] if len(s) == 3 else [])
            if len(s) == 3 and s[0] == 1:
                options.append((rng.choice([2, 3]), 1, 1))  # broadcasts the input over channels
            ws = rng.choice(options)
            w = torch.randn(ws, dtype=torch.float64) * rng.choice([0.5, 2.0])
            consts[key] = w.abs() + 0.5 if op == "tensor_div" else w
            out = tuple(max(a, b) for a, b in zip(s, ws))
        elif op == "masked_fill":
            consts[key], arg = torch.rand(s) > 0.5, rng.choice([0.0, 1.5])
        elif op == "index":
            arg = [rng.randrange(s[0]) for _ in range(rng.choice([1, 2, 3]))]
            out = (len(arg), *s[1:])
        elif op in ("quantize", "round"):
            arg = rng.choice([1.0, 10.0])
        steps.append((op, ins, arg))
        shapes.append(out)
    return Program(steps, layers, consts).double().eval(), shapes[0]


def lower_bound(model: nn.Module, inputs: torch.Tensor, rng: random.Random, climbs: int = 8) -> float:
    """Largest of: ||J(z)||_2 (full Jacobian, float64 SVD) at each sample, and secants
    ||f(z + h u) - f(z)|| / h along the top singular vector and random directions, improved by
    random search on (z, u) at several distances h."""
    def f(z):  # a fresh input per call: a model may write into its input
        return model(z.unsqueeze(0).clone()).flatten()

    best = 0.0
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for z in inputs:
        z = z.detach().double()
        try:
            jac = torch.autograd.functional.jacobian(f, z).reshape(-1, z.numel())
        except RuntimeError:  # a write in place autograd cannot differentiate through: secants only
            jac = torch.zeros(0, z.numel(), dtype=torch.float64)
        _, sv, vh = torch.linalg.svd(jac, full_matrices=False)
        best = max(best, float(sv[0]) if sv.numel() else 0.0)
        dirs = [vh[0].reshape(z.shape)] if sv.numel() else []
        dirs += [torch.randn(z.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
        with torch.no_grad():
            for u in dirs:
                u = u / u.norm()
                for h in (1e-1, 1e-2, 1e-4):
                    zc, uc = z, u
                    rate = float((f(zc + h * uc) - f(zc)).norm()) / h
                    for _ in range(climbs):  # random search on the point and direction
                        zn = zc + 0.3 * torch.randn(z.shape, generator=gen, dtype=torch.float64)
                        un = uc + 0.3 * torch.randn(z.shape, generator=gen, dtype=torch.float64)
                        un = un / un.norm()
                        r = float((f(zn + h * un) - f(zn)).norm()) / h
                        if r > rate:
                            zc, uc, rate = zn, un, r
                    best = max(best, rate)
    return best
