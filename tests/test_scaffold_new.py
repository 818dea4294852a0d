"""``gnomon plugins new``: the generated project is complete, and once installed passes its own tests."""

from __future__ import annotations

import json
import os
import py_compile
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gnomon.cli.commands import scaffold_cmd
from gnomon.core import HOOK_API_VERSION
from gnomon.core.errors import GnomonError


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GNOMON_", "PYTEST_")) and k not in {"MLFLOW_TRACKING_URI", "PYTHONPATH"}}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", **extra)
    return env


def test_new_generates_a_complete_project(gnomon_cli, tmp_path):
    result = gnomon_cli("plugins", "new", "gnomon-noise", "--dest", str(tmp_path))
    assert result.exit_code == 0, result.output
    root = tmp_path / "gnomon-noise"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [".gitignore", "README.md", "pyproject.toml", "src/gnomon_noise/__init__.py",
                     "src/gnomon_noise/tasks.py", "tests/test_gnomon_noise.py"]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["project"]["name"] == "gnomon-noise"
    assert project["project"]["entry-points"]["gnomon"] == {"noise": "gnomon_noise"}
    init = (root / "src/gnomon_noise/__init__.py").read_text()
    assert f'GNOMON_HOOK_API = "{HOOK_API_VERSION.split(".")[0]}"' in init
    for path in root.rglob("*"):
        if path.is_file():
            assert "{{" not in path.read_text(), f"unrendered placeholder in {path}"
        if path.suffix == ".py":
            py_compile.compile(str(path), doraise=True, cfile=str(tmp_path / "compiled.pyc"))
    assert "gnomon run noise" in (root / "README.md").read_text()
    assert "pip install -e ." in result.output


def test_names_are_derived_and_checked():
    names = scaffold_cmd.plugin_names("my-Attack.v2", task="blur_attack")
    assert (names.dist_name, names.plugin_name, names.module) == ("my-Attack.v2", "my_attack_v2", "gnomon_my_attack_v2")
    assert (names.task_name, names.schema_class, names.task_const) == ("blur_attack", "BlurAttackSchema",
                                                                       "BLUR_ATTACK_TASK")
    with pytest.raises(GnomonError, match="letters, digits"):
        scaffold_cmd.plugin_names("1bad name")
    with pytest.raises(GnomonError, match="--task"):
        scaffold_cmd.plugin_names("gnomon-ok", task="Bad-Task")


def test_refuses_existing_folder_and_taken_task_name(gnomon_cli, tmp_path):
    (tmp_path / "gnomon-busy").mkdir()
    (tmp_path / "gnomon-busy" / "keep.txt").write_text("mine")
    busy = gnomon_cli("plugins", "new", "gnomon-busy", "--dest", str(tmp_path))
    assert busy.exit_code == 1 and "already exists" in busy.stderr
    assert os.listdir(tmp_path / "gnomon-busy") == ["keep.txt"]

    taken = gnomon_cli("plugins", "new", "gnomon-dataset-summary", "--dest", str(tmp_path))
    assert taken.exit_code == 1
    assert "task 'dataset_summary' is already provided by plugin 'builtin.utility_tasks'" in " ".join(taken.stderr.split())
    assert not (tmp_path / "gnomon-dataset-summary").exists()


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = scaffold_cmd.render

    def failing(text, values, source):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(text, values, source)

    monkeypatch.setattr(scaffold_cmd, "render", failing)
    with pytest.raises(OSError, match="disk full"):
        scaffold_cmd.generate_plugin("gnomon-half", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_placeholder_names_the_template():
    with pytest.raises(GnomonError, match=r"tests/x.tmpl: unknown placeholder \{\{nope\}\}"):
        scaffold_cmd.render("a {{nope}} b", {"task_name": "t"}, "tests/x.tmpl")


def test_installed_project_passes_its_own_tests(tmp_path):
    """CI proof: generate, pip install (no network), run the project's pytest in a subprocess."""
    root = scaffold_cmd.generate_plugin("gnomon-ci-check", tmp_path / "work")
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(site), str(root)],
        capture_output=True, text=True, timeout=300, env=_clean_env())
    assert install.returncode == 0, install.stderr
    assert (site / "gnomon_ci_check").is_dir() and list(site.glob("gnomon_ci_check-*.dist-info"))
    env = _clean_env(PYTHONPATH=str(site), GNOMON_HOME=str(tmp_path / "home"))

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=root,
                           capture_output=True, text=True, timeout=600, env=env)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "failed" not in tests.stdout

    gnomon = Path(sys.executable).with_name("gnomon")
    listed = subprocess.run([str(gnomon), "plugins", "list", "--json"], capture_output=True, text=True,
                            timeout=120, env=env)
    entry = {e["name"]: e for e in json.loads(listed.stdout)}["ci_check"]
    assert entry["source"] == "entry point" and not entry["broken"] and entry["version"] == "0.1.0"
    assert entry["provides"] == {"tasks": ["ci_check"]} and entry["warnings"] == []
