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

from liptriton._version import __version__

__all__ = [
    "CHECKPOINT_FORMAT", "EXPORT_FORMAT", "FORMAT_VERSION", "check_folder", "check_state", "check_user_metadata", "cpu_tensors",
    "digest", "read", "versions", "write",
]

FORMAT_VERSION = 1
EXPORT_FORMAT = "liptriton.export"
CHECKPOINT_FORMAT = "liptriton.checkpoint"
_MAX_HEADER = 100_000_000  # the safetensors parser's own limit on the header length


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


def check_folder(owner: str, path: str | os.PathLike) -> None:
    """Raise FileNotFoundError (NotADirectoryError) if the folder that would hold ``path`` is missing.

    Saving never creates folders (as ``torch.save``): a typo in a path is an error, not a new tree.
    """
    folder = Path(os.fspath(path)).parent
    if not folder.exists():
        raise FileNotFoundError(f"{owner}: the folder {str(folder)!r} of {os.fspath(path)!r} does not exist; "
                                "create it first (os.makedirs(folder, exist_ok=True)): nothing was written")
    if not folder.is_dir():
        raise NotADirectoryError(f"{owner}: {str(folder)!r} (the folder of {os.fspath(path)!r}) is not a folder")
    if Path(os.fspath(path)).is_dir():
        raise IsADirectoryError(f"{owner}: {os.fspath(path)!r} is a folder; expected a file name to write")


def write(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any], owner: str = "liptriton") -> None:
    """Write a safetensors file atomically; every metadata value is JSON-encoded.

    Raises FileNotFoundError naming the folder when it does not exist (see :func:`check_folder`).
    """
    from safetensors.torch import save_file

    check_folder(owner, path)
    header = {k: json.dumps(v) for k, v in meta.items()}
    header["sha256"] = json.dumps(digest(tensors, header))
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _not_safetensors(owner: str, path: Path, head: bytes, size: int) -> ValueError:
    """Why a file whose header is not a valid safetensors header is refused (only called then)."""
    if head.startswith(b"PK\x03\x04"):
        return ValueError(f"{owner}: {path} is a zip archive (torch.save format?), not a safetensors file; "
                          "liptriton reads safetensors only")
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return ValueError(f"{owner}: {path} is a pickle stream (torch.save's legacy format?), not a safetensors "
                          "file; liptriton reads safetensors only")
    if size < 8:
        return ValueError(f"{owner}: {path} is too short ({size} bytes) to be a safetensors file (truncated?)")
    n = struct.unpack("<Q", head[:8])[0]
    return ValueError(f"{owner}: {path} is truncated or not a safetensors file (an 8-byte header length of {n}, "
                      f"file of {size} bytes)")


def _check_header(owner: str, path: Path) -> None:
    """Reject what is not a safetensors file, with the reason, before the parser sees it.

    The format: an 8-byte little-endian header length ``n``, then ``n`` bytes of JSON (an
    object), then the data. Only a file that fails this is diagnosed (zip, pickle, truncated):
    no signature test can refuse a valid file, whatever its first bytes.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or n < 2 or n > size - 8 or n > _MAX_HEADER:
            raise _not_safetensors(owner, path, head, size)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise ValueError(  # noqa: TRY004 (the file's content is wrong, not an argument's type)
            f"{owner}: {path} is not a safetensors file (its {n}-byte header is not a JSON object)")


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
                hint: str = "", flexible: set[str] | dict[str, int] = frozenset()) -> None:
    """Raise one ValueError listing missing keys, unexpected keys and shape mismatches, if any.

    Keys in ``flexible`` may differ in their sizes but not in rank, nor in their first dims: two for
    a set (spatial sizes of an input-shaped state), the number given for a dict.
    """
    fixed = flexible if isinstance(flexible, dict) else dict.fromkeys(flexible, 2)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = []
    for key in sorted(set(expected) & set(found)):
        a, b = tuple(expected[key].shape), tuple(found[key].shape)
        ok = a == b or (key in fixed and len(a) == len(b) and a[:fixed[key]] == b[:fixed[key]])
        if not ok:
            shapes.append(f"{key}: file {b}, model {a}")
    if missing or unexpected or shapes:
        raise ValueError(f"{owner}: {path} does not match the model's architecture (nothing was loaded)"
                         f"{hint}\n  missing keys: {missing}\n  unexpected keys: {unexpected}\n"
                         f"  shape mismatches: {shapes}")
