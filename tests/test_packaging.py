"""The built wheel maps core/, cli/ and plugins/builtin/ under one import root, ``gnomon``, and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools writes gnomon.egg-info and build/ into the source tree, and a
    # gnomon.egg-info in the checkout shadows the installed metadata for every process started there.
    src = tmp_path_factory.mktemp("src") / "gnomon"
    ignore = shutil.ignore_patterns(".git", ".venv", ".tox", "__pycache__", "*.egg-info", "build", "dist")
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "core", "cli", "plugins"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": ignore} if (REPO / name).is_dir() else {}))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("gnomon-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        return zf.namelist()


def test_single_import_root(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"gnomon"}, f"stray top-level entries: {tops - dist_info - {'gnomon'}}"


def test_every_source_module_is_in_the_wheel(wheel_names):
    expected = set()
    for folder, package in (("core", "gnomon/core"), ("cli", "gnomon/cli"), ("plugins/builtin", "gnomon/plugins/builtin")):
        for path in (REPO / folder).rglob("*.py"):
            rel = path.relative_to(REPO / folder)
            if "__pycache__" in rel.parts or "templates" in rel.parts:
                continue
            expected.add(f"{package}/{rel.as_posix()}")
    missing = expected - set(wheel_names)
    assert not missing, f"modules missing from the wheel: {sorted(missing)}"
    assert "gnomon/core/engine.py" in wheel_names and "gnomon/cli/main.py" in wheel_names


def test_no_tests_contrib_or_benchmarks_leak(wheel_names):
    assert not [n for n in wheel_names if n.startswith(("gnomon/plugins/contrib", "tests/", "benchmarks/"))]
    assert not [n for n in wheel_names if "__pycache__" in n or n.endswith(".pyc")]


def test_console_script_and_pytest_plugin_entry_points(wheel_names, tmp_path):
    entry_points = next(n for n in wheel_names if n.endswith(".dist-info/entry_points.txt"))
    assert entry_points


def test_data_files_are_packaged(wheel_names):
    toml_sources = sorted(p.name for p in (REPO / "plugins" / "builtin" / "workflow_files").glob("*.toml"))
    packaged = sorted(Path(n).name for n in wheel_names if n.startswith("gnomon/plugins/builtin/workflow_files/")
                      and n.endswith(".toml"))
    assert packaged == toml_sources
