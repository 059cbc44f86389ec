"""save_program: the converted architecture as a torch.export program, loadable without liptriton.

For a model whose constrained function the user's own architecture cannot hold (see
:func:`liptriton.save`), the baked converted model itself is written: a ``.pt2`` archive of
:func:`torch.export.save` (the graph as JSON, the weights as raw bytes, no example inputs: no
pickle), with liptriton's metadata, the certificate included, as the archive's extra file
``liptriton.json``. Anyone with torch loads it with :func:`torch.export.load`.
"""

from __future__ import annotations

import json
import operator
import os
import zipfile
from pathlib import Path

import torch
from torch import Tensor, nn

from liptriton._architecture import first_input, qualname
from liptriton._files import FORMAT_VERSION, check_user_metadata, versions
from liptriton.export import _bake, _bound

__all__ = ["PROGRAM_FORMAT", "read_program_metadata", "save_program"]

PROGRAM_FORMAT = "liptriton.program"
META_FILE = "liptriton.json"
_TORCH_NAMESPACES = ("aten", "prims")


def _foreign_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Operations of the program that a plain torch cannot run (custom ops, e.g. liptriton's)."""
    out = set()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if isinstance(target, torch._ops.OpOverload) and target.namespace in _TORCH_NAMESPACES:
            continue
        if getattr(target, "__module__", None) in ("_operator", "operator") or target is operator.getitem:
            continue
        out.add(str(target))
    return sorted(out)


def save_program(model: nn.Module, path: str | os.PathLike, *, example_input: Tensor,
                 metadata: dict | None = None) -> None:
    """Write the baked model, in its own (converted) architecture, as a torch.export program.

    The alternative to :func:`liptriton.save` when the user's architecture cannot compute the
    constrained function. The batch dimension stays dynamic where the model allows it (else it
    is fixed at ``example_input``'s, and the metadata says so).

    Args:
        model: the constrained model (e.g. from :func:`liptriton.lipschitzify`), left unchanged.
        path: the ``.pt2`` file to write (written atomically).
        example_input: an input of the real size (one tensor with a batch dimension): the program
            is traced, and certified, on it.
        metadata: your own JSON-serializable dict, stored under ``user``.

    Raises:
        TypeError: ``example_input`` is not one tensor.
        ValueError: the traced program holds operations torch alone cannot run.

    Examples:
        >>> import torch, liptriton
        >>> net = liptriton.lipschitzify(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()))
        >>> liptriton.save_program(net, "/tmp/net.pt2", example_input=torch.randn(2, 4))
        >>> program = torch.export.load("/tmp/net.pt2")  # no liptriton needed
        >>> liptriton.load_metadata("/tmp/net.pt2")["bound"]["kind"]
        'certified'
    """
    owner = "liptriton.save_program"
    user = check_user_metadata(owner, metadata)
    x = first_input(example_input)
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError(f"{owner}: example_input must be one tensor with a batch dimension, got "
                        f"{type(example_input).__name__}")
    baked, layers = _bake(model, example_input, None)
    baked.eval()
    bound = _bound(baked, layers, x)
    x = x.detach().to(next(iter(baked.parameters()), x).dtype)
    with torch.no_grad():
        try:
            program = torch.export.export(baked, (x,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
            batch = "dynamic"
        except Exception:  # noqa: BLE001 (a model that specializes its batch size: export it at this one)
            program = torch.export.export(baked, (x,))
            batch = x.shape[0]
    foreign = _foreign_ops(program)
    if foreign:
        raise ValueError(f"{owner}: the traced program calls operations that torch alone cannot run: {foreign}")
    program.example_inputs = None  # else torch.export.save pickles them
    meta = {"format": PROGRAM_FORMAT, "format_version": FORMAT_VERSION, **versions(),
            "architecture": {"class": qualname(baked), "written_for": "torch.export.load (the converted model's "
                             "graph, its constraints baked in)", "input_shape": list(x.shape[1:]), "batch": batch},
            "layers": layers, "bound": bound, "user": user}
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}.pt2"
    try:
        torch.export.save(program, tmp, extra_files={META_FILE: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_program_metadata(path: str | os.PathLike) -> dict:
    """The liptriton metadata of a ``.pt2`` file written by :func:`save_program`.

    Raises:
        ValueError: a zip archive without liptriton metadata, or metadata that is not JSON.

    Examples:
        >>> import torch, liptriton
        >>> net = liptriton.lipschitzify(torch.nn.Sequential(torch.nn.Linear(4, 2)))
        >>> liptriton.save_program(net, "/tmp/net.pt2", example_input=torch.randn(2, 4))
        >>> read_program_metadata("/tmp/net.pt2")["format"]
        'liptriton.program'
    """
    p = Path(os.fspath(path))
    with zipfile.ZipFile(p) as archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{META_FILE}")]
        if not names:
            raise ValueError(f"liptriton.load_metadata: {p} is a zip archive without liptriton metadata (not "
                             "written by liptriton.save_program)")
        try:
            meta = json.loads(archive.read(names[0]))
        except json.JSONDecodeError as err:
            raise ValueError(f"liptriton.load_metadata: {p} has corrupted liptriton metadata ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != PROGRAM_FORMAT:
        raise ValueError(f"liptriton.load_metadata: {p} has liptriton metadata of another format")
    return meta
