"""The README's quickstart runs as written, and its two set-up commands match .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

pytestmark = pytest.mark.slow


def _quickstart() -> str:
    match = re.search(r"<!-- quickstart:[^>]*-->\s*```python\n(.*?)```", README, re.S)
    assert match, "README.md has no quickstart block"
    return match.group(1)


def test_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_quickstart(), "README.md:quickstart", "exec"), namespace)
    assert (tmp_path / "model.safetensors").stat().st_size > 0
    assert namespace["cert"].upper <= 1.0 + 1e-3


def test_readme_gives_exactly_two_setup_commands_and_ci_runs_the_test_one():
    commands = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    assert len(commands) == 2, commands
    demo, tests = commands
    assert "python -m liptriton.demo" in demo
    test_cmd = tests.split("&&")[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci, f"{test_cmd!r} not in .ci/run"
