"""pytest plugin shipped with gnomon: an isolated engine and a throwaway MLflow store.

Installed as the ``pytest11`` entry point ``gnomon``; fixtures are available to any
project that has gnomon installed.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def gnomon_home(tmp_path, monkeypatch):
    """A throwaway GNOMON_HOME with its own embedded MLflow store; MLFLOW_TRACKING_URI unset."""
    home = tmp_path / "gnomon-home"
    home.mkdir()
    monkeypatch.setenv("GNOMON_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("GNOMON_EXPERIMENT", raising=False)
    return home


@pytest.fixture
def gnomon_engine(gnomon_home):
    """A fresh :class:`~gnomon.core.engine.Engine` with all installed plugins and a throwaway store.

    Use ``gnomon_engine_factory(plugins=[my_module])`` to register only your plugin module.
    """
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    return Engine(load_plugins(environ={}), experiment="test", show_progress=False)


@pytest.fixture
def gnomon_engine_factory(gnomon_home):
    """Build engines with chosen plugin modules registered (plus the builtin plugin by default)."""
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import PluginInfo, _register, load_plugins

    def make(plugins=(), builtins: bool = True, experiment: str = "test"):
        plugin_set = load_plugins(environ={}, builtins=builtins, entry_points=[])
        for module in plugins:
            name = getattr(module, "__name__", str(module)).split(".")[-1]
            _register(plugin_set, PluginInfo(name=name, source="test", module=getattr(module, "__name__", "")),
                      lambda m=module: m)
        return Engine(plugin_set, experiment=experiment, show_progress=False)

    return make
