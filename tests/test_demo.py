"""The main job runs end to end (one epoch, eager) and its printed checks are asserted."""

from __future__ import annotations

import re

import pytest

from liptriton import demo

pytestmark = pytest.mark.slow


def test_demo_end_to_end(tmp_path, capsys):
    status = demo.main(["--epochs", "1", "--out", str(tmp_path), "--seed", "0", "--no-compile"])
    out = capsys.readouterr().out
    assert status == 0, out
    clean = float(re.search(r"clean accuracy: ([0-9.]+)", out).group(1))
    assert clean > 0.3  # one epoch on 1437 digits
    upper = float(re.search(r"certificate: upper ([0-9.]+)", out).group(1))
    assert upper <= 1.0 + 1e-3
    table = dict(re.findall(r"^\s+([0-9.]+) \| ([0-9.]+)$", out, re.M))
    assert set(map(float, table)) == set(demo.RADII)
    assert float(table["0.00"]) == pytest.approx(clean, abs=1e-4)
    accuracies = [float(table[k]) for k in sorted(table, key=float)]
    assert accuracies == sorted(accuracies, reverse=True) and accuracies[1] > 0
    flips = re.search(r"(\d+) of (\d+) certified predictions flipped", out)
    assert flips and int(flips.group(1)) == 0 and int(flips.group(2)) > 0
    assert "identical predictions: True" in out
    assert (tmp_path / "digits-cnn.safetensors").stat().st_size > 0
    assert (tmp_path / "certified_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "nonsense"], "--device 'nonsense' cannot be used here"),
        (["--out", "/proc/forbidden/out"], "is not a writable folder"),
        (["--epochs", "0"], "--epochs must be >= 1"),
    ],
    ids=["device", "out", "epochs"],
)
def test_demo_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
