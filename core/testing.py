"""pytest plugin shipped with gnomon: an isolated engine and a throwaway MLflow store.

Installed as the ``pytest11`` entry point ``gnomon``, so these fixtures are available to any
project that has gnomon installed (nothing to import, nothing to add to ``conftest.py``):

``gnomon_home``
    A throwaway ``GNOMON_HOME`` (embedded MLflow store + artifacts) for the test;
    ``MLFLOW_TRACKING_URI`` and ``GNOMON_EXPERIMENT`` are unset.
``gnomon_engine``
    An :class:`~gnomon.core.engine.Engine` on that store with every installed plugin
    (yours included, through its entry point), progress bars off.
``gnomon_engine_factory``
    ``make(plugins=[module, ...], builtins=True, experiment="test")``: an engine with only
    the given plugin modules registered (plus the builtin plugin unless ``builtins=False``);
    for testing a plugin module that is not installed.
``gnomon_image_folder``
    ``make(n_classes=3, per_class=4, size=(8, 8), channels=1, seed=0)``: a small folder of
    class subfolders of random PNG images, the layout every ``data_dir`` parameter takes.
``gnomon_cli``
    ``invoke("run", "my_task", "-P", "x=1")``: run the ``gnomon`` command line in-process
    against the throwaway store; returns click's ``Result`` (``exit_code``, ``stdout``, ``stderr``).

Nothing here imports TensorFlow, ART or MLflow at import time.
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


@pytest.fixture
def gnomon_image_folder(tmp_path):
    """Make small folders of random PNGs laid out as ``<root>/<class>/<n>.png``; returns the root."""
    counter = {"n": 0}

    def make(n_classes: int = 3, per_class: int = 4, size: tuple[int, int] = (8, 8), channels: int = 1,
             seed: int = 0):
        import numpy as np
        from PIL import Image

        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {channels}")
        rng = np.random.default_rng(seed)
        counter["n"] += 1
        root = tmp_path / f"images-{counter['n']}"
        shape = tuple(size) if channels == 1 else (*size, 3)
        for label in range(n_classes):
            folder = root / str(label)
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
        return root

    return make


@pytest.fixture
def gnomon_cli(gnomon_home, monkeypatch):
    """Invoke the ``gnomon`` CLI in-process: ``gnomon_cli("tasks", "list", env={"NAME": "value"})``."""
    from typer.testing import CliRunner

    from gnomon.cli import state
    from gnomon.cli.main import build_app

    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        state.reset()
        try:
            with monkeypatch.context() as m:
                for key, value in (env or {}).items():
                    m.setenv(key, value)
                return runner.invoke(build_app(), [str(a) for a in args], catch_exceptions=False)
        finally:
            state.reset()

    return invoke
