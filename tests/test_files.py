"""Files: format detection reads the safetensors header (never a first-byte guess), pickle and
zip files are still refused, and saving into a missing folder says which folder."""

from __future__ import annotations

import struct

import pytest
import torch
from torch import nn

import liptriton


def _model() -> nn.Module:
    return nn.Sequential(liptriton.spectral(nn.Linear(5, 3)), nn.ReLU(), nn.Linear(3, 2))


def test_load_accepts_every_low_byte_of_the_header_length(tmp_path):
    """The 8-byte little-endian header length may end in any byte (0x80 included): all load."""
    model = _model()
    path = tmp_path / "net.safetensors"
    liptriton.save(model, path)
    data = path.read_bytes()
    n0 = struct.unpack("<Q", data[:8])[0]
    header, body = data[8:8 + n0].rstrip(b" "), data[8 + n0:]
    expected = liptriton.bake(model).state_dict()
    seen = set()
    for low in range(256):
        n = len(header) + (low - len(header)) % 256  # the JSON padded with spaces to a length ending in `low`
        blob = struct.pack("<Q", n) + header + b" " * (n - len(header)) + body
        assert blob[0] == low
        seen.add(blob[0])
        variant = tmp_path / f"low{low}.safetensors"
        variant.write_bytes(blob)
        loaded = liptriton.load(variant, nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2)))
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items()), low
        assert liptriton.load_metadata(variant)["format"] == "liptriton.export"
    assert seen == set(range(256))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy-pickle"])
def test_torch_save_files_are_refused_with_the_reason(tmp_path, zipped):
    plain = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    path = tmp_path / "model.pt"
    torch.save(plain.state_dict(), path, _use_new_zipfile_serialization=zipped)
    assert path.read_bytes()[:1] == (b"P" if zipped else b"\x80")
    with pytest.raises(ValueError, match="zip archive" if zipped else "pickle stream") as info:
        liptriton.load(path, plain)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="zip archive" if zipped else "pickle stream"):
        liptriton.load_checkpoint(path, plain)


def test_header_that_is_not_json_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"[1] " + b"\x00" * 8)
    with pytest.raises(ValueError, match="not a JSON object"):
        liptriton.load(path, nn.Linear(2, 2))


def test_save_into_a_missing_folder_names_the_folder_and_writes_nothing(tmp_path):
    model = _model()
    target = tmp_path / "runs" / "exp1" / "net.safetensors"
    for save in (lambda p: liptriton.save(model, p, example_input=torch.randn(2, 5)),
                 lambda p: liptriton.save_checkpoint(model, p)):
        with pytest.raises(FileNotFoundError, match="does not exist") as info:
            save(target)
        msg = str(info.value)
        assert str(tmp_path / "runs" / "exp1") in msg and "tmp" not in msg.replace(str(tmp_path), "")
        assert not (tmp_path / "runs").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        liptriton.save(model, tmp_path / "file" / "net.safetensors")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        liptriton.save(model, tmp_path)
