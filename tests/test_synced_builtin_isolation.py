"""A synced copy of the builtin plugins runs on its own code, never the worker's installed copy.

On a worker the builtins arrive as the directory plugin package ``builtin/`` and load as
``gnomon_dir_plugins.builtin.*``. If any builtin module imported a sibling by its installed
name (``gnomon.plugins.builtin.x``), the worker would silently mix two versions of the code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from gnomon.core.plugins import load_plugins
from gnomon.core.remote.bundle import build_bundle, extract_bundle

PROBE = textwrap.dedent("""
    import importlib, json, sys
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    plugins = load_plugins(builtins=False, entry_points=[], plugin_path=[sys.argv[1]], load=None, disable=[],
                           strict=True)
    engine = Engine(plugins=plugins, show_progress=False)
    registry = plugins.registry
    # every module of the synced package, imported the way its own code imports them
    package = importlib.import_module("gnomon_dir_plugins.builtin")
    import pkgutil
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"gnomon_dir_plugins.builtin.{info.name}")
    # code paths that import siblings lazily, inside functions
    fit = importlib.import_module("gnomon_dir_plugins.builtin.training_tasks").fit_adversarial_available()
    engine.validate("train", {"epochs": "1", "data_dir_train": sys.argv[2], "data_dir_test": sys.argv[3]})
    result = engine.run("dataset_summary", {"data_dir": sys.argv[3]})
    print(json.dumps({
        "installed": sorted(m for m in sys.modules if m.startswith("gnomon.plugins")),
        "synced": sorted(m for m in sys.modules if m.startswith("gnomon_dir_plugins.builtin")),
        "plugins": sorted(plugins.infos), "fit_module": fit.__module__, "status": result.status,
        "tasks": len(registry.tasks),
    }))
""")


def test_synced_builtins_never_import_the_installed_copy(tmp_path, mnist_sample_dirs, gnomon_home):
    plugins = load_plugins(environ={}, entry_points=[])
    bundle = build_bundle(plugins.infos["builtin.models"])
    assert bundle.name == "builtin" and bundle.module == "gnomon.plugins.builtin"
    cache = tmp_path / "cache"
    extract_bundle(bundle.data, cache, bundle.name)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(cache), str(mnist_sample_dirs["training"]),
                           str(mnist_sample_dirs["testing"])], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["installed"] == [], f"the synced builtins imported the installed copy: {seen['installed']}"
    assert "gnomon_dir_plugins.builtin.adversarial_training" in seen["synced"]
    assert seen["fit_module"] == "gnomon_dir_plugins.builtin.adversarial_training"
    assert seen["plugins"] == sorted(plugins.infos) and seen["status"] == "FINISHED"
    assert seen["tasks"] == len(plugins.registry.tasks)
