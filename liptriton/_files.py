"""safetensors files of liptriton (exports and checkpoints): atomic writes, checked reads.

Every metadata value is a JSON string; ``sha256`` covers the metadata and the tensors, so a
corrupted byte anywhere is reported. Reads reject what is not safetensors (pickle, zip, text,
truncated files) with the path and the reason, before any model is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "CHECKPOINT_FORMAT", "EXPORT_FORMAT", "FORMAT_VERSION", "check_state", "check_user_metadata", "cpu_tensors",
    "digest", "read", "versions", "write",
]

FORMAT_VERSION = 1
EXPORT_FORMAT = "liptriton.export"
CHECKPOINT_FORMAT = "liptriton.checkpoint"


def cpu_tensors(owner: str, state: dict[str, Any], prefix: str = "") -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{owner}: state entry {key!r} is a {type(value).__name__}, not a tensor: "
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
    if head[:1] == b"\x80" and head[8:9] != b"{":  # a safetensors header of 128 + 256 n bytes starts so too
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
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118 (not a dict)
    except Exception as err:  # noqa: BLE001 (the parser's SafetensorError, OS errors: all mean unreadable)
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
