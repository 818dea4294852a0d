"""Compatibility: hook API versions and heavy imports at plugin import time.

A plugin written for another hook API major version is refused with a message naming the
plugin and both versions, and every command keeps working; a plugin that imports a heavy
library at import time is loaded but warned about in ``gnomon plugins list``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gnomon.cli import state
from gnomon.cli.main import build_app
from gnomon.core import HOOK_API_VERSION
from gnomon.core.errors import PluginError
from gnomon.core.plugins import load_plugins
from tests.plugin_fakes import TASK_PLUGIN, FakeEntryPoint, write_module

GNOMON = Path(sys.executable).with_name("gnomon")


def _plugin(task: str, header: str = "") -> str:
    return TASK_PLUGIN.format(task=task, extra=textwrap.dedent(header))


@pytest.fixture
def plugin_path(tmp_path):
    """A GNOMON_PLUGIN_PATH directory holding a future-API plugin and a compatible one."""
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "future_plugin.py").write_text(_plugin("future_task", 'GNOMON_HOOK_API = "2"'))
    (d / "current_plugin.py").write_text(_plugin("current_task", f'GNOMON_HOOK_API = "{HOOK_API_VERSION}"'))
    return d


@pytest.fixture
def fake_heavy(tmp_path, monkeypatch):
    """A stand-in top-level module called ``jax`` (not installed here) on sys.path."""
    d = tmp_path / "fake-site"
    (d / "jax").mkdir(parents=True)
    (d / "jax" / "__init__.py").write_text("NUMBER = 42\n")
    monkeypatch.syspath_prepend(str(d))
    for name in [n for n in sys.modules if n == "jax" or n.startswith("jax.")]:
        monkeypatch.delitem(sys.modules, name)
    yield d
    for name in [n for n in sys.modules if n == "jax" or n.startswith("jax.")]:
        del sys.modules[name]


@pytest.fixture
def cli(gnomon_home, monkeypatch):
    runner = CliRunner()

    def invoke(*args, env):
        state.reset()
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            result = runner.invoke(build_app(), list(args), catch_exceptions=False)
        state.reset()
        return result

    yield invoke
    state.reset()


def test_incompatible_api_names_plugin_and_both_versions(plugin_path):
    plugins = load_plugins(environ={"GNOMON_PLUGIN_PATH": str(plugin_path)}, entry_points=[])
    info = plugins.infos["future_plugin"]
    assert info.broken and info.api_version == "2"
    assert "'future_plugin'" in info.error
    assert "hook API 2" in info.error and f"hook API {HOOK_API_VERSION}" in info.error
    assert "major versions match" in info.hint
    # the compatible plugin and the builtins are untouched
    assert not plugins.infos["current_plugin"].broken
    assert {"current_task", "dataset_summary"} <= set(plugins.registry.tasks)
    assert "future_task" not in plugins.registry.tasks


def test_same_major_with_other_minor_is_accepted(tmp_path):
    write_module(tmp_path, "fake_minor", _plugin("minor_task", f'GNOMON_HOOK_API = "{HOOK_API_VERSION.split(".")[0]}.99"'))
    sys.path.insert(0, str(tmp_path))
    try:
        plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("minor", "fake_minor")])
    finally:
        sys.path.remove(str(tmp_path))
    assert not plugins.infos["minor"].broken
    assert "minor_task" in plugins.registry.tasks


def test_incompatible_api_is_fatal_only_in_strict_mode(plugin_path):
    with pytest.raises(PluginError, match="future_plugin.*hook API 2"):
        load_plugins(environ={"GNOMON_PLUGIN_PATH": str(plugin_path), "GNOMON_STRICT_PLUGINS": "1"},
                     entry_points=[])


def test_cli_keeps_working_with_an_incompatible_plugin(cli, plugin_path):
    env = {"GNOMON_PLUGIN_PATH": str(plugin_path)}
    listed = cli("tasks", "list", "--json", env=env)
    assert listed.exit_code == 0
    names = {t["name"] for t in json.loads(listed.stdout)}
    assert {"current_task", "dataset_summary"} <= names and "future_task" not in names
    assert "future_plugin" in listed.stderr and "hook API 2" in listed.stderr

    shown = cli("plugins", "list", "--json", env=env)
    entries = {e["name"]: e for e in json.loads(shown.stdout)}
    assert entries["future_plugin"]["broken"] and "hook API 2" in entries["future_plugin"]["error"]
    assert entries["current_plugin"]["provides"] == {"tasks": ["current_task"]}

    ran = cli("run", "current_task", "-P", "value=5", "--json", env=env)
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["metrics"]["value"] == 5.0


def test_heavy_import_at_import_time_is_warned(fake_heavy, tmp_path):
    write_module(tmp_path, "fake_heavy_plugin", _plugin("heavy_task", "import jax"))
    write_module(tmp_path, "fake_light_plugin", _plugin("light_task"))
    sys.path.insert(0, str(tmp_path))
    try:
        plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("heavy", "fake_heavy_plugin"),
                                                         FakeEntryPoint("light", "fake_light_plugin")])
    finally:
        sys.path.remove(str(tmp_path))
    heavy = plugins.infos["heavy"]
    assert not heavy.broken and "heavy_task" in plugins.registry.tasks  # warned, still loaded
    assert any("imports jax at import time" in w for w in heavy.warnings)
    assert plugins.infos["light"].warnings == []
    assert all(plugins.infos[n].warnings == [] for n in plugins.infos if n.startswith("builtin."))


def test_heavy_module_imported_earlier_by_someone_else_is_still_warned(fake_heavy, tmp_path):
    import jax  # noqa: F401 - already in sys.modules before the plugin loads

    write_module(tmp_path, "fake_late_heavy", _plugin("late_task", "import jax as accelerated"))
    write_module(tmp_path, "fake_from_heavy", _plugin("from_task", "from jax import NUMBER"))
    sys.path.insert(0, str(tmp_path))
    try:
        plugins = load_plugins(environ={}, entry_points=[FakeEntryPoint("late", "fake_late_heavy"),
                                                         FakeEntryPoint("fromimp", "fake_from_heavy")])
    finally:
        sys.path.remove(str(tmp_path))
    assert any("imports jax" in w for w in plugins.infos["late"].warnings)
    # binding a plain value (an int) from a heavy module is not a module reference we can see
    assert plugins.infos["fromimp"].warnings == []


def test_plugins_list_shows_heavy_import_warning(cli, fake_heavy, tmp_path):
    d = tmp_path / "dir-plugins"
    d.mkdir()
    (d / "slow_plugin.py").write_text(_plugin("slow_task", "import jax"))
    result = cli("plugins", "list", env={"GNOMON_PLUGIN_PATH": str(d)})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "warning slow_plugin: imports jax at import time" in text


def test_real_cli_subprocess_with_incompatible_and_heavy_plugins(plugin_path, fake_heavy, gnomon_home):
    (plugin_path / "slow_plugin.py").write_text(_plugin("slow_task", "import jax"))
    env = {**os.environ, "GNOMON_PLUGIN_PATH": str(plugin_path), "PYTHONPATH": str(fake_heavy),
           "COLUMNS": "200"}
    tasks = subprocess.run([str(GNOMON), "tasks", "list", "--json"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert tasks.returncode == 0, tasks.stderr
    assert "current_task" in tasks.stdout and "slow_task" in tasks.stdout and "future_task" not in tasks.stdout
    assert "plugin 'future_plugin' was written for gnomon hook API 2" in tasks.stderr
    listed = subprocess.run([str(GNOMON), "plugins", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    out = " ".join(listed.stdout.split())
    assert "slow_plugin: imports jax at import time" in out
    assert f"this gnomon provides hook API {HOOK_API_VERSION}" in out
