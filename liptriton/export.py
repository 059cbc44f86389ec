"""Export: bake the constraints into plain weights and read/write safetensors files with a certificate.

A baked model is a plain torch model: every parametrization replaced by its constrained weight,
computed with converged iterations, under the key names of the plain architecture (``0.weight``).
Files are safetensors only (never pickle): tensors, plus string metadata holding JSON (format
version, library versions, each constrained layer's constraint and k, the bound, a SHA-256 of the
tensors). Training checkpoints (the unbaked state) are in :mod:`liptriton.checkpoint`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from liptriton.ops.bjorck import bjorck as bjorck_op
from liptriton.ops.conv_operator import conv_operator_norm
from liptriton.parametrizations._base import ConvNormState, LipschitzParametrization, MatrixNormState, check_iters
from liptriton.parametrizations.bjorck import Bjorck

__all__ = ["bake", "save", "load", "load_metadata", "FORMAT_VERSION"]

FORMAT_VERSION = 1
EXPORT_FORMAT = "liptriton.export"
CHECKPOINT_FORMAT = "liptriton.checkpoint"
_MAX_EXTRA_BJORCK = 64  # cap of the extra Björck steps taken while they make the weight more orthogonal


# ----------------------------------------------------------------------------------------------- bake
def _drop_observe_hooks(model: nn.Module) -> None:
    """Remove the input-size hooks of liptriton's conv states: after a deepcopy they still point at the
    states of the original model (a closure is copied by reference)."""
    for m in model.modules():
        for hid, hook in list(m._forward_pre_hooks.items()):
            if (getattr(hook, "__qualname__", "") == "register.<locals>._observe"
                    and getattr(hook, "__module__", "") == "liptriton.parametrizations._base"):
                del m._forward_pre_hooks[hid]
                m._forward_pre_hooks_with_kwargs.pop(hid, None)


def _own_classes(model: nn.Module) -> None:
    """Give every parametrized module of a deepcopy its own class: deepcopy shares the dynamically
    created ``Parametrized<Layer>`` class with the original, and removing a parametrization deletes
    its property from that class (it would break the original model)."""
    for m in model.modules():
        if parametrize.is_parametrized(m):
            cls = type(m)
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            m.__class__ = type(cls.__name__, cls.__bases__, body)


def _observe(model: nn.Module, example_input: Tensor | tuple) -> None:
    """One eval forward of ``example_input`` that tells every conv state its input size."""
    handles = []
    for m in model.modules():
        if parametrize.is_parametrized(m):
            for plist in m.parametrizations.values():
                for p in plist:
                    if isinstance(getattr(p, "conv", None), ConvNormState):
                        handles.append(m.register_forward_pre_hook(
                            lambda mod, args, c=p.conv: c.observe(args[0]) if args else None))
    inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()


def _orth_error(q: Tensor) -> float:
    q = q.double()
    g = q @ q.mT if q.shape[-2] <= q.shape[-1] else q.mT @ q
    return float((g - torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)).norm(dim=(-2, -1)).max())


def _extra_bjorck_steps(p: Bjorck, w: Tensor) -> int:
    """Björck steps beyond ``p.n_iters`` that keep reducing ``||Q^T Q - I||`` (each step keeps every
    singular value <= 1, so the bound is unchanged)."""
    wb = p.layout.to_batch(w)
    sigma = p.state.norm(wb, update=False)
    q = bjorck_op(wb / sigma[:, None, None], p.n_iters, p.order, p.beta)
    err, extra = _orth_error(q), 0
    while extra < _MAX_EXTRA_BJORCK and err > 0:
        q1 = bjorck_op(q, 1, p.order, p.beta)
        err1 = _orth_error(q1)
        if not err1 < 0.9 * err:
            break
        q, err, extra = q1, err1, extra + 1
    return extra


def _converge(p: LipschitzParametrization, w: Tensor, steps: int | None) -> None:
    """Re-run the power iterations of ``p`` (``steps``, else its ``n_iters_init``) from its current state."""
    w = w.float() if w.dtype in (torch.float16, torch.bfloat16) else w

    def run(states: list) -> None:
        saved = [s.n_iters_init for s in states]
        for s in states:
            s.fresh = True
            s.n_iters_init = steps or s.n_iters_init
        try:
            with torch.autocast(device_type=w.device.type, enabled=False):
                p.compute(w)
        finally:
            for s, n in zip(states, saved):
                s.n_iters_init = n

    states = [s for s in (getattr(p, "state", None), getattr(p, "conv", None))
              if isinstance(s, (MatrixNormState, ConvNormState))]
    if states:
        run(states)
    if isinstance(p, Bjorck):
        extra = _extra_bjorck_steps(p, w)
        if extra:
            p.n_iters += extra
            if isinstance(getattr(p, "conv", None), ConvNormState):
                run([p.conv])  # the operator norm of the more orthogonal kernel
    p._cache = None


def _plainify(module: nn.Module) -> nn.Module:
    """Replace liptriton layers by their plain export (``vanilla_export``), recursively."""
    export = getattr(module, "vanilla_export", None)
    if callable(export):
        try:
            new = export()
        except NotImplementedError:
            new = module
        if isinstance(new, nn.Module) and new is not module:
            return _plainify(new)
    for name, child in list(module.named_children()):
        if name == "parametrizations" and parametrize.is_parametrized(module):
            continue
        new = _plainify(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _bake(model: nn.Module, example_input, power_iters: int | None) -> tuple[nn.Module, list[dict]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"liptriton.bake: model must be an nn.Module, got {type(model).__name__}")
    check_iters("liptriton.bake", "power_iters", power_iters, optional=True)
    baked = copy.deepcopy(model).eval()
    _own_classes(baked)
    _drop_observe_hooks(baked)
    if example_input is not None:
        _observe(baked, example_input)
    layers: list[dict] = []
    with torch.no_grad():
        for path, module in baked.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for name, plist in module.parametrizations.items():
                x = plist.original if plist.is_tensor else None
                entry = {"name": f"{path}.{name}" if path else name, "module": type(module).__mro__[1].__name__,
                         "constraints": [], "k": None, "bound": None}
                for p in plist:
                    if x is not None and isinstance(p, LipschitzParametrization):
                        _converge(p, x, power_iters)
                    entry["constraints"].append(type(p).__name__)
                    if isinstance(p, LipschitzParametrization):
                        entry["k"], entry["bound"] = p.k, p.lipschitz_bound()
                        conv = getattr(p, "conv", None)
                        if isinstance(conv, ConvNormState):
                            entry["input_size"] = list(conv.input_size)
                            entry["input_size_observed"] = bool(conv.observed)
                            entry["_conv"] = (conv.spec, conv.x[:1].float().clone())
                        if isinstance(p, Bjorck):
                            entry["bjorck_iters"] = p.n_iters
                    if x is not None:
                        x = p(x)
                if entry["k"] is not None:
                    layers.append(entry)
    baked = _plainify(baked)
    for m in list(baked.modules()):  # what has no plain counterpart keeps its class, weights baked
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    baked.train(model.training)
    state = baked.state_dict()
    for entry in layers:  # the operator norm of what was baked, as measured here
        weight = state.get(entry["name"])
        conv = entry.pop("_conv", None)
        if weight is None:
            continue
        with torch.no_grad():
            if conv is not None:
                entry["measured_norm"] = float(conv_operator_norm(conv[0], weight.float(), conv[1]))
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

    Example:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.bjorck(torch.nn.Linear(4, 4)))
        >>> list(liptriton.bake(net).state_dict())
        ['0.weight', '0.bias']
    """
    return _bake(model, example_input, power_iters)[0]


# ---------------------------------------------------------------------------------------------- files
def _cpu_tensors(owner: str, state: dict[str, Any], prefix: str = "") -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"{owner}: state entry {key!r} is a {type(value).__name__}, not a tensor: "
                             "safetensors files hold tensors only")
        out[prefix + key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def digest(tensors: dict[str, Tensor], header: dict[str, str]) -> str:
    """SHA-256 over the metadata strings and the names, dtypes, shapes and bytes of ``tensors``."""
    h = hashlib.sha256(json.dumps(sorted((k, v) for k, v in header.items() if k != "sha256")).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """The versions recorded in every file."""
    from liptriton import __version__

    return {"liptriton_version": __version__, "torch_version": torch.__version__}


def check_user_metadata(owner: str, metadata: dict | None) -> dict:
    """Return ``metadata`` (a JSON-serializable dict with str keys) or raise a TypeError."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
        raise TypeError(f"{owner}: metadata must be a dict with str keys, got {type(metadata).__name__}")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{owner}: metadata must be JSON-serializable ({err})") from None
    return metadata


def write(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write a safetensors file atomically; every metadata value is JSON-encoded."""
    from safetensors.torch import save_file

    header = {k: json.dumps(v) for k, v in meta.items()}
    header["sha256"] = json.dumps(digest(tensors, header))
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _check_header(owner: str, path: Path) -> None:
    """Reject what is not a safetensors file, with the reason, before the parser sees it."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):
        raise ValueError(f"{owner}: {path} is a zip archive (torch.save/pickle format?), not a safetensors "
                         "file; liptriton reads safetensors only")
    if head[:1] == b"\x80":
        raise ValueError(f"{owner}: {path} is a pickle stream, not a safetensors file; liptriton reads "
                         "safetensors only")
    if len(head) < 9:
        raise ValueError(f"{owner}: {path} is too short ({size} bytes) to be a safetensors file (truncated?)")
    n = struct.unpack("<Q", head[:8])[0]
    if n > size - 8:
        raise ValueError(f"{owner}: {path} is truncated or not a safetensors file (header of {n} bytes, "
                         f"file of {size})")
    if head[8:9] != b"{":
        raise ValueError(f"{owner}: {path} is not a safetensors file (no JSON header)")


def read(owner: str, path: str | os.PathLike, fmt: str | None, tensors: bool = True) -> tuple[dict, dict]:
    """Read and check a liptriton safetensors file: (tensors, decoded metadata).

    ``fmt`` is the required format (None: either liptriton format). Raises FileNotFoundError for a
    missing file and ValueError, naming the path and the problem, for anything else.
    """
    from safetensors import safe_open

    p = Path(os.fspath(path))
    if not p.is_file():
        raise FileNotFoundError(f"{owner}: no file at {p}")
    _check_header(owner, p)
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as err:  # the parser's own error type (SafetensorError) and OS errors
        raise ValueError(f"{owner}: {p} is not a readable safetensors file: {err}") from None
    meta, broken = {}, []
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
            broken.append(key)
    if tensors and isinstance(meta.get("sha256"), str) and meta["sha256"] != digest(data, raw):
        raise ValueError(f"{owner}: {p} is corrupted: its tensors and metadata do not match their SHA-256")
    found = meta.get("format")
    wanted = (fmt,) if fmt else (EXPORT_FORMAT, CHECKPOINT_FORMAT)
    if found not in wanted:
        what = f"a {found!r} file" if isinstance(found, str) else "a safetensors file not written by liptriton"
        hint = {EXPORT_FORMAT: " (use liptriton.load)", CHECKPOINT_FORMAT: " (use liptriton.load_checkpoint)"}
        raise ValueError(f"{owner}: {p} is {what}{hint.get(found, '')}, expected {' or '.join(wanted)}")
    if broken or (tensors and not isinstance(meta.get("sha256"), str)):
        raise ValueError(f"{owner}: {p} is corrupted: bad or missing metadata {broken or ['sha256']}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{owner}: {p} has format_version {version!r}; this liptriton reads <= {FORMAT_VERSION}")
    return data, meta


def check_state(owner: str, path: str | os.PathLike, expected: dict[str, Tensor], found: dict[str, Tensor],
                hint: str = "", flexible: set[str] = frozenset()) -> None:
    """Raise one ValueError listing missing keys, unexpected keys and shape mismatches, if any.

    Keys in ``flexible`` may differ in their trailing (spatial) sizes but not in rank or first two dims.
    """
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = []
    for key in sorted(set(expected) & set(found)):
        a, b = tuple(expected[key].shape), tuple(found[key].shape)
        ok = a == b or (key in flexible and len(a) == len(b) and a[:2] == b[:2])
        if not ok:
            shapes.append(f"{key}: file {b}, model {a}")
    if missing or unexpected or shapes:
        raise ValueError(f"{owner}: {path} does not match the model's architecture (nothing was loaded)"
                         f"{hint}\n  missing keys: {missing}\n  unexpected keys: {unexpected}\n"
                         f"  shape mismatches: {shapes}")


def _bound(baked: nn.Module, layers: list[dict], example_input) -> dict:
    note = ""
    if example_input is not None:
        try:
            import importlib

            certify = importlib.import_module("liptriton.certify").certify
        except (ImportError, AttributeError) as err:
            note = f"liptriton.certify unavailable ({err}); "
        else:
            inputs = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
            cert = certify(baked, *inputs)
            out = {"kind": "certified", "upper": float(cert.upper),
                   "input_shape": [list(t.shape) for t in inputs if isinstance(t, Tensor)]}
            if getattr(cert, "lower", None) is not None:
                out["lower"] = float(cert.lower)
            return out
    value = math.prod(entry["bound"] for entry in layers) if layers else None
    return {"kind": "product_of_layer_bounds", "value": value,
            "note": note + "product of the constrained layers' bounds: the model's bound only for a chain of "
                    "these layers and 1-Lipschitz activations (no residual sums); not a certificate"}


def save(model: nn.Module, path: str | os.PathLike, *, example_input: Tensor | tuple | None = None,
         metadata: dict | None = None) -> None:
    """Bake ``model`` and write its plain weights to a safetensors file, with the bound in the metadata.

    Metadata (JSON strings): ``format``, ``format_version``, ``liptriton_version``, ``torch_version``,
    ``layers`` (per constrained tensor: key, constraints, k, bound, measured norm, conv input
    size), ``bound`` (with ``example_input`` and liptriton.certify available: the certified upper
    bound of the baked model, ``kind="certified"``; else the product of the layers' bounds,
    labelled ``kind="product_of_layer_bounds"``), ``user`` (``metadata``) and ``sha256``.

    Args:
        model: the constrained model (left unchanged).
        path: the file to write (written atomically).
        example_input: an input of the real size: convolutions are normalized at least at this
            size and the certificate is computed on it.
        metadata: your own JSON-serializable dict, stored under ``user``.

    Example:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.spectral(torch.nn.Linear(4, 2)))
        >>> liptriton.save(net, "/tmp/net.safetensors")
        >>> liptriton.load_metadata("/tmp/net.safetensors")["layers"][0]["k"]
        1.0
    """
    user = check_user_metadata("liptriton.save", metadata)
    baked, layers = _bake(model, example_input, None)
    tensors = _cpu_tensors("liptriton.save", baked.state_dict())
    meta = {"format": EXPORT_FORMAT, "format_version": FORMAT_VERSION, **versions(), "layers": layers,
            "bound": _bound(baked.eval(), layers, example_input), "user": user}
    write(path, tensors, meta)


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
            export, or a wrong architecture.

    Example:
        >>> model = liptriton.load("/tmp/net.safetensors", torch.nn.Sequential(torch.nn.Linear(4, 2)))
    """
    owner = "liptriton.load"
    tensors, _ = read(owner, path, EXPORT_FORMAT)
    hint = ""
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        hint = " (the model has parametrizations: load into the plain architecture, e.g. liptriton.bake(model))"
    check_state(owner, path, model.state_dict(), tensors, hint)
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)
    return model


def load_metadata(path: str | os.PathLike) -> dict:
    """Return the decoded metadata of a liptriton file (export or checkpoint), without reading tensors.

    Example:
        >>> liptriton.load_metadata("/tmp/net.safetensors")["format"]
        'liptriton.export'
    """
    return read("liptriton.load_metadata", path, None, tensors=False)[1]
