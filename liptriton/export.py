"""Export: bake the constraints into plain weights and read/write safetensors files with a certificate.

A baked model is a plain torch model: every parametrization replaced by its constrained weight,
computed with converged iterations, under the key names of the plain architecture (``0.weight``).
A model made by lipschitzify is written in the architecture it was given (see
:mod:`liptriton._architecture`), or refused with the reason. Files are safetensors only (never pickle, see :mod:`liptriton._files`): tensors, plus string metadata
holding JSON (format version, library versions, each constrained layer's constraint and k, the bound,
a SHA-256). Training checkpoints (the unbaked state) are in :mod:`liptriton.checkpoint`.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
import zipfile

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from liptriton._architecture import is_converted, user_architecture
from liptriton._bake import bake_in_place, drop_stale_hooks, observe, plainify
from liptriton._files import (
    EXPORT_FORMAT,
    FORMAT_VERSION,
    check_folder,
    check_state,
    check_user_metadata,
    cpu_tensors,
    read,
    versions,
    write,
)
from liptriton.bounds.conv_operator import conv_operator_norm, conv_power_iteration
from liptriton.certify import certify
from liptriton.parametrizations._base import ConvNormState, LipschitzParametrization
from liptriton.parametrizations._checks import check_iters
from liptriton.parametrizations.bjorck import Bjorck

__all__ = ["FORMAT_VERSION", "bake", "load", "load_metadata", "save"]



_MEASURE_STEPS = 50  # power steps on the baked conv operator for the measured norm (a lower estimate)


def _bake(model: nn.Module, example_input, power_iters: int | None) -> tuple[nn.Module, list[dict]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"liptriton.bake: model must be an nn.Module, got {type(model).__name__}")
    check_iters("liptriton.bake", "power_iters", power_iters, optional=True)
    baked = copy.deepcopy(model)
    modes = {name: m.training for name, m in baked.named_modules()}
    baked.eval()
    drop_stale_hooks(baked)
    if example_input is not None:
        observe(baked, example_input)
    layers: list[dict] = []
    with torch.no_grad():
        for path, module in baked.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for name, plist in module.parametrizations.items():
                x = plist.original if plist.is_tensor else None
                entry = {"name": f"{path}.{name}" if path else name,
                         "module": parametrize.type_before_parametrizations(module).__name__,
                         "constraints": [], "k": None, "bound": None}
                for p in plist:
                    if x is not None and isinstance(p, LipschitzParametrization):
                        p.converge(x, power_iters)
                    entry["constraints"].append(type(p).__name__)
                    if isinstance(p, LipschitzParametrization):
                        entry["k"], entry["bound"] = p.k, p.lipschitz_bound()
                        conv = getattr(p, "conv", None)
                        if isinstance(conv, ConvNormState):
                            if not conv.observed:
                                warnings.warn(f"liptriton.bake: {entry['name']} has never seen an input: its operator "
                                              f"norm is taken at the default input size {conv.input_size}; run the "
                                              "model once or pass example_input", stacklevel=3)
                            entry["input_size"] = list(conv.input_size)
                            entry["input_size_observed"] = bool(conv.observed)
                            entry["_conv"] = (conv.spec, conv.x[:1].float().clone())
                        if isinstance(p, Bjorck):
                            entry["bjorck_iters"] = p.n_iters + p.eval_extra
                    if x is not None:
                        x = p(x)
                if entry["k"] is not None:
                    layers.append(entry)
    baked = plainify(baked)
    for m in list(baked.modules()):  # what has no plain counterpart keeps its class, weights baked
        if parametrize.is_parametrized(m):
            bake_in_place(m)
    for name, m in baked.named_modules():  # each module back in its mode (plain modules: no side effect)
        m.training = modes.get(name, model.training)
    state = baked.state_dict()
    for entry in layers:  # the operator norm of what was baked, as measured here
        weight = state.get(entry["name"])
        conv = entry.pop("_conv", None)
        if weight is None:
            continue
        with torch.no_grad():
            if conv is not None:  # the state's vector, converged on the baked weight
                x = conv_power_iteration(conv[0], weight.float(), conv[1], _MEASURE_STEPS)
                entry["measured_norm"] = float(conv_operator_norm(conv[0], weight.float(), x))
                entry["measured_by"] = "converged power iteration at input_size (a lower estimate)"
            elif weight.dim() == 2:
                entry["measured_norm"] = float(torch.linalg.matrix_norm(weight.double(), 2))
                entry["measured_by"] = "float64 SVD"
    return baked, layers


def bake(model: nn.Module, *, example_input: Tensor | tuple | None = None,
         power_iters: int | None = None) -> nn.Module:
    """Return a copy of ``model`` with every parametrization replaced by its constrained weight.

    The power iterations are re-run to convergence from their current state (``power_iters``
    steps, else each state's ``n_iters_init``) rather than trusting the last training estimate;
    Björck layers take extra steps while these make the weight more orthogonal (each step keeps
    every singular value <= 1). liptriton layers become the plain torch layer where one exists
    (their ``vanilla_export``); liptriton activations are kept. ``model`` is not modified.

    Args:
        model: a model with liptriton (or any torch) parametrizations.
        example_input: optional input (tensor or tuple) run once through the copy so every
            convolution's operator norm is taken at least at this input size.
        power_iters: power-iteration steps for the convergence (default: each state's n_iters_init).

    Returns:
        A plain model, in the mode ``model`` was in, whose state_dict uses the plain key names.

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.bjorck(torch.nn.Linear(4, 4)))
        >>> sorted(liptriton.bake(net).state_dict())
        ['0.bias', '0.weight']
    """
    return _bake(model, example_input, power_iters)[0]



def _bound(baked: nn.Module, layers: list[dict], example_input) -> dict:
    note = ""
    if isinstance(example_input, (tuple, list)):
        if len(example_input) != 1:
            note = "liptriton.certify takes one input tensor; "
        example_input = example_input[0] if len(example_input) == 1 else None
    if example_input is not None:
        cert = certify(baked, example_input)
        out = {"kind": "certified", "upper": float(cert.upper), "input_shape": list(example_input.shape)}
        if getattr(cert, "lower", None) is not None:
            out["lower"] = float(cert.lower)
        return out
    value = math.prod(entry.get("constraint_bound", entry["bound"]) for entry in layers) if layers else None
    return {"kind": "product_of_layer_bounds", "value": value,
            "note": note + "product of the constrained layers' bounds: the model's bound only for a chain of "
                    "these layers and 1-Lipschitz activations (no residual sums); not a certificate"}


def save(model: nn.Module, path: str | os.PathLike, *, example_input: Tensor | tuple | None = None,
         metadata: dict | None = None) -> None:
    """Bake ``model`` and write its plain weights to a safetensors file, with the bound in the metadata.

    A model made by :func:`liptriton.lipschitzify` is written in the architecture it was given:
    the scalings the conversion inserted (output scale, pooling and activation constants, the
    weights of the convex residual sums) are pushed through positively homogeneous operations
    (ReLU, GroupSort, pooling, identity shortcuts) into the neighbouring Linear / Conv weights
    and biases, and folded BatchNorms are written as exact identities (weight 1, bias 0, mean 0,
    ``var + eps = 1``). The file then loads strictly into the user's own (plain) model, in eval
    mode, and computes the constrained function. Where that architecture cannot (a scaling no
    layer can absorb, e.g. before a GELU or at the output of a sigmoid), save raises and names
    the node; :func:`liptriton.save_program` writes the converted architecture instead.
    Other models are written under their own key names (liptriton layers as torch layers).

    Metadata (JSON strings): ``format``, ``format_version``, ``liptriton_version``, ``torch_version``,
    ``architecture`` (``class``: the model class the weights are for; what it was written for),
    ``layers`` (per constrained tensor: key, constraints, k, ``bound`` of the file's weight, the
    ``absorbed_factor`` and the ``constraint_bound`` before it, measured norm, conv input size),
    ``bound`` (with ``example_input``: the certified upper bound of the file's model,
    ``kind="certified"``; else the product of the layers' bounds, labelled
    ``kind="product_of_layer_bounds"``), ``user`` (``metadata``) and ``sha256``.

    Args:
        model: the constrained model (left unchanged).
        path: the file to write (written atomically).
        example_input: an input of the real size: convolutions are normalized at least at this
            size, the certificate is computed on it, scalings that depend on the input size
            (adaptive pooling) are taken at it, and the written model is checked against it.
        metadata: your own JSON-serializable dict, stored under ``user``.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist (save creates no folder, as
            ``torch.save``; checked before any work).
        ValueError: the user's architecture cannot compute the converted model's function (the
            nodes are named), or bad metadata.

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.spectral(torch.nn.Linear(4, 2)))
        >>> liptriton.save(net, "/tmp/net.safetensors")
        >>> liptriton.load_metadata("/tmp/net.safetensors")["layers"][0]["k"]
        1.0
    """
    user = check_user_metadata("liptriton.save", metadata)
    check_folder("liptriton.save", path)  # before the (slow) bake and certificate
    baked, layers = _bake(model, example_input, None)
    plain, state, architecture = user_architecture(model, baked, layers, example_input)
    tensors = cpu_tensors("liptriton.save", state)
    meta = {"format": EXPORT_FORMAT, "format_version": FORMAT_VERSION, **versions(), "architecture": architecture,
            "layers": layers, "bound": _bound(plain.eval(), layers, example_input), "user": user}
    write(path, tensors, meta, "liptriton.save")


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save` into a plain model of the same architecture.

    Everything is checked before the model is touched: a wrong architecture raises one
    ValueError listing the missing keys, the unexpected keys and the shape mismatches.

    Args:
        path: the file.
        model: the plain architecture (e.g. ``nn.Sequential(nn.Linear(4, 2))``).

    Returns:
        ``model``, with the baked weights.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, truncated or corrupted, a checkpoint instead of an
            export, or a wrong architecture (a file :func:`save` wrote for the architecture given
            to lipschitzify refuses the converted or baked model, whose scalings it already holds).

    Examples:
        >>> import torch, liptriton
        >>> liptriton.save(torch.nn.Sequential(liptriton.spectral(torch.nn.Linear(4, 2))), "/tmp/net.safetensors")
        >>> model = liptriton.load("/tmp/net.safetensors", torch.nn.Sequential(torch.nn.Linear(4, 2)))
    """
    owner = "liptriton.load"
    tensors, meta = read(owner, path, EXPORT_FORMAT)
    arch = meta.get("architecture") if isinstance(meta.get("architecture"), dict) else {}
    if arch.get("from") == "lipschitzify" and is_converted(model):
        raise ValueError(f"{owner}: {path} holds the weights of {arch.get('class')}, the architecture given to "
                         "lipschitzify (the conversion's scalings are in its weights); load it into that plain "
                         "model, in eval mode, not into the converted or baked model")
    hint = ""
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        hint = " (the model has parametrizations: load into the plain architecture, e.g. liptriton.bake(model))"
    check_state(owner, path, model.state_dict(), tensors, hint)
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model


def load_metadata(path: str | os.PathLike) -> dict:
    """Return the decoded metadata of a liptriton file, without reading tensors.

    Export (:func:`save`) and checkpoint files (safetensors), and programs of
    :func:`liptriton.save_program` (``.pt2``). ``architecture["class"]`` names the model class
    the weights are for.

    Examples:
        >>> import torch, liptriton
        >>> liptriton.save(torch.nn.Sequential(liptriton.spectral(torch.nn.Linear(4, 2))), "/tmp/net.safetensors")
        >>> liptriton.load_metadata("/tmp/net.safetensors")["format"]
        'liptriton.export'
    """
    if os.path.isfile(path) and zipfile.is_zipfile(path):
        from liptriton.program import read_program_metadata

        return read_program_metadata(path)
    return read("liptriton.load_metadata", path, None, tensors=False)[1]
