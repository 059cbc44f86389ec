"""Training checkpoints in safetensors: the unbaked state, so that training resumes exactly.

A checkpoint holds the model's state_dict as it is (original parameters, power-iteration buffers,
the convolution states whose shape is the learned input size) under ``model/<key>``, the
optimizer's tensors under ``optimizer/<n>`` with the rest of its state dict JSON-encoded in the
metadata, and the flags of the iteration states (fresh, observed) that a state_dict does not carry.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from liptriton._files import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    check_folder,
    check_state,
    check_user_metadata,
    cpu_tensors,
    read,
    versions,
    write,
)
from liptriton.parametrizations._base import ConvNormState, LipschitzParametrization, MatrixNormState

__all__ = ["load_checkpoint", "save_checkpoint"]


def _encode(obj: Any, tensors: dict[str, Tensor], owner: str) -> Any:
    """JSON-able form of a state dict: tensors moved to ``tensors``; tuples and non-str keys kept."""
    if isinstance(obj, Tensor):
        name = f"optimizer/{len(tensors)}"
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, owner) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, owner) for v in obj]
    if isinstance(obj, dict):
        return {"__dict__": [[_encode(k, tensors, owner), _encode(v, tensors, owner)] for k, v in obj.items()]}
    raise TypeError(f"{owner}: cannot store a {type(obj).__name__} of the optimizer state in safetensors")


def _decode(obj: Any, tensors: dict[str, Tensor], owner: str, path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, owner, path) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            if obj["__tensor__"] not in tensors:
                raise ValueError(f"{owner}: {path} is corrupted: optimizer tensor {obj['__tensor__']!r} is missing")
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors, owner, path) for v in obj["__tuple__"])
        if "__dict__" in obj:
            return {_decode(k, tensors, owner, path): _decode(v, tensors, owner, path) for k, v in obj["__dict__"]}
        raise ValueError(f"{owner}: {path} has corrupted optimizer metadata")
    return obj


def _constraints(model: nn.Module) -> dict[str, list]:
    """``{"<module>.<tensor>": [[class name, k], ...]}`` for every parametrized tensor."""
    out = {}
    for path, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for name, plist in m.parametrizations.items():
                out[f"{path}.{name}" if path else name] = [
                    [type(p).__name__, p.k if isinstance(p, LipschitzParametrization) else None] for p in plist]
    return out


def _state_flags(model: nn.Module) -> dict[str, dict]:
    flags = {}
    for path, m in model.named_modules():
        if isinstance(m, (MatrixNormState, ConvNormState)):
            flags[path] = m.flags()
    return flags


def save_checkpoint(model: nn.Module, path: str | os.PathLike, optimizer: torch.optim.Optimizer | None = None,
                    *, metadata: dict | None = None, rng: bool = True) -> None:
    """Write the unbaked training state (model and optionally optimizer) to a safetensors file.

    Args:
        model: the model being trained (with its parametrizations).
        path: the file to write (written atomically).
        optimizer: its state (tensors, param groups, step counts) is stored too.
        metadata: your own JSON-serializable dict (e.g. the epoch), stored under ``user``.
        rng: store the random number generator states (CPU, and CUDA where initialized), so that
            dropout and data shuffling also resume exactly.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist (no folder is created, as
            ``torch.save``).

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.bjorck(torch.nn.Linear(4, 2)))
        >>> opt = torch.optim.Adam(net.parameters())
        >>> liptriton.save_checkpoint(net, "/tmp/ckpt.safetensors", opt, metadata={"epoch": 3})
    """
    owner = "liptriton.save_checkpoint"
    user = check_user_metadata(owner, metadata)
    check_folder(owner, path)
    tensors = cpu_tensors(owner, model.state_dict(), prefix="model/")
    opt_tensors: dict[str, Tensor] = {}
    opt = None if optimizer is None else _encode(optimizer.state_dict(), opt_tensors, owner)
    tensors.update(opt_tensors)
    if rng:
        tensors["rng/cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors.update({f"rng/cuda{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
    meta = {"format": CHECKPOINT_FORMAT, "format_version": FORMAT_VERSION, **versions(),
            "constraints": _constraints(model), "state_flags": _state_flags(model), "optimizer": opt, "user": user}
    write(path, tensors, meta, owner)


def _check_optimizer(owner: str, path, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    if not isinstance(groups, list):
        raise ValueError(f"{owner}: {path} has corrupted optimizer metadata")  # noqa: TRY004 (a bad file)
    have = [len(g["params"]) for g in optimizer.param_groups]
    found = [len(g.get("params", [])) for g in groups]
    if have != found:
        raise ValueError(f"{owner}: {path} holds an optimizer with parameter groups of sizes {found}, the "
                         f"optimizer has {have} (nothing was loaded)")


def load_checkpoint(path: str | os.PathLike, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None, *, restore_rng: bool = True) -> dict:
    """Restore a checkpoint of :func:`save_checkpoint` into ``model`` (and ``optimizer``), exactly.

    Build the same model (same constraints) and optimizer, then load: the next training step
    is the one an uninterrupted run would take (bit for bit on CPU). Everything is checked
    before anything is loaded: state keys and shapes (a convolution state may have another
    learned input size), the constraint classes and k of every parametrized tensor, and the
    optimizer's parameter groups.

    Args:
        path: the file.
        model: the model, constructed as the one that was saved.
        optimizer: the optimizer to restore (the file must hold one).
        restore_rng: set the random number generators to their saved states (when stored).

    Returns:
        The ``user`` metadata stored with the checkpoint.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a safetensors file, truncated or corrupted, an export instead of a
            checkpoint, another architecture or constraint, or a missing optimizer state.

    Examples:
        >>> import torch, liptriton
        >>> net = torch.nn.Sequential(liptriton.bjorck(torch.nn.Linear(4, 2)))
        >>> opt = torch.optim.Adam(net.parameters())
        >>> liptriton.save_checkpoint(net, "/tmp/ckpt.safetensors", opt, metadata={"epoch": 3})
        >>> info = liptriton.load_checkpoint("/tmp/ckpt.safetensors", net, opt)
        >>> info["epoch"]
        3
    """
    owner = "liptriton.load_checkpoint"
    tensors, meta = read(owner, path, CHECKPOINT_FORMAT)
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    # a convolution's state follows its learned input size: the basis x (same batch and channels)
    # and the certificate's vectors v (one per frequency block)
    flexible = {f"{p}.{key}" if p else key: fixed for p, m in model.named_modules() if isinstance(m, ConvNormState)
                for key, fixed in (("x", 2), ("v", 0))}
    check_state(owner, path, model.state_dict(), state, flexible=flexible)
    mine, theirs = _constraints(model), meta.get("constraints", {})
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"{owner}: {path} was saved with other constraints (nothing was loaded): "
                         + "; ".join(f"{k}: file {theirs.get(k)}, model {mine.get(k)}" for k in diff))
    saved_opt = None
    if optimizer is not None:
        if meta.get("optimizer") is None:
            raise ValueError(f"{owner}: {path} holds no optimizer state (saved without an optimizer)")
        saved_opt = _decode(meta["optimizer"], tensors, owner, path)
        _check_optimizer(owner, path, saved_opt, optimizer)
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    for p, flags in meta.get("state_flags", {}).items():
        model.get_submodule(p).load_flags(flags)
    for m in model.modules():
        if isinstance(m, LipschitzParametrization):
            m.invalidate()
    if saved_opt is not None:
        optimizer.load_state_dict(saved_opt)
    if restore_rng and "rng/cpu" in tensors:
        torch.set_rng_state(tensors["rng/cpu"])
        cuda = [tensors[f"rng/cuda{i}"] for i in range(len(tensors)) if f"rng/cuda{i}" in tensors]
        if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
    return meta.get("user", {})
