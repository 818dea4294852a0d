"""docs/writing-a-plugin.md stays true: its plugin, built from the scaffold plus the code it shows, passes its tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gnomon.cli.commands import scaffold_cmd

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md"


def _blocks(lang: str) -> list[str]:
    return [body for kind, body in re.findall(r"```(\w*)\n(.*?)```", DOC.read_text(), flags=re.S) if kind == lang]


def _block_starting(lang: str, prefix: str) -> str:
    found = [b for b in _blocks(lang) if b.startswith(prefix)]
    assert len(found) == 1, f"docs/writing-a-plugin.md: expected one {lang} block starting with {prefix!r}"
    return found[0]


def test_tutorial_commands_match_the_scaffold():
    text = DOC.read_text()
    assert "gnomon plugins new gnomon-occlusion --task occlusion" in text
    names = scaffold_cmd.plugin_names("gnomon-occlusion", task="occlusion")
    assert f'{names.plugin_name} = "{names.module}"' in text  # the entry point the tutorial shows
    assert f"from .tasks import {names.task_const}" in text
    assert f"tests/test_{names.module}.py" in text


@pytest.mark.slow
def test_tutorial_plugin_passes_its_tests(tmp_path):
    root = scaffold_cmd.generate_plugin("gnomon-occlusion", tmp_path / "src", task="occlusion")
    (root / "src" / "gnomon_occlusion" / "tasks.py").write_text(
        _block_starting("python", '"""The ``occlusion`` task'))
    (root / "tests" / "test_gnomon_occlusion.py").write_text(_block_starting("python", '"""Tests of gnomon-occlusion'))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GNOMON_", "PYTEST_")) and k not in {"MLFLOW_TRACKING_URI", "PYTHONPATH"}}
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                              "--no-build-isolation", "--target", str(site), str(root)],
                             capture_output=True, text=True, timeout=300, env=env)
    assert install.returncode == 0, install.stderr
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root,
                           capture_output=True, text=True, timeout=600,
                           env={**env, "PYTHONPATH": str(site), "GNOMON_HOME": str(tmp_path / "home")})
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "5 passed" in tests.stdout
