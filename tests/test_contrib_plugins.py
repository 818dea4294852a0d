"""The contrib plugins as distributions: they build, install and load like any third-party plugin.

Their own behaviour is tested in ``plugins/contrib/*/tests``; here: each builds into a wheel
with the ``gnomon`` entry point, the installed copy loads from where it was installed, and the
CLI lists them and runs their tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CONTRIB = Path(__file__).resolve().parents[1] / "plugins" / "contrib"
PLUGINS = {
    "gnomon-fgm": ("fgm", "gnomon_fgm", {"tasks": ["fgm"]}),
    "gnomon-feature-squeezing": ("feature_squeezing", "gnomon_feature_squeezing",
                                 {"tasks": ["feature_squeezing"], "models": ["mlp"], "defenses": ["feature_squeezing"]}),
}
INSTALL_HINT = ("install the contrib plugins first: pip install --no-deps -e plugins/contrib/gnomon-fgm "
                "-e plugins/contrib/gnomon-feature-squeezing")

_LOAD_FROM_TARGET = """
import json, sys
from importlib.metadata import distributions
from gnomon.core.plugins import load_plugins
target = sys.argv[1]
eps = [ep for dist in distributions(path=[target]) for ep in dist.entry_points if ep.group == "gnomon"]
plugins = load_plugins(environ={}, builtins=False, entry_points=eps)
print(json.dumps({name: {"file": sys.modules[info.module].__file__, "broken": info.broken, "version": info.version,
                         "provides": plugins.registry.provided_by(name), "warnings": info.warnings}
                  for name, info in plugins.infos.items()}))
"""


@pytest.mark.parametrize("project", sorted(PLUGINS))
def test_builds_installs_and_loads_from_its_install_location(project, tmp_path):
    plugin, module, provides = PLUGINS[project]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                            "--no-build-isolation", "--wheel-dir", str(wheels), str(CONTRIB / project)],
                           capture_output=True, text=True, timeout=300, env=env)
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert f"[gnomon]\n{plugin} = {module}" in entry_points
    assert f"{module}/__init__.py" in names and not any(n.startswith("tests/") for n in names)

    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                                "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300,
                               env=env)
    assert installed.returncode == 0, installed.stderr
    loaded = subprocess.run([sys.executable, "-c", _LOAD_FROM_TARGET, str(target)], capture_output=True, text=True,
                            timeout=300, env={**env, "PYTHONPATH": str(target)})
    assert loaded.returncode == 0, loaded.stderr
    info = json.loads(loaded.stdout)[plugin]
    assert Path(info["file"]).is_relative_to(target)
    assert (info["broken"], info["version"], info["provides"], info["warnings"]) == (False, "0.1.0", provides, [])


def test_cli_lists_both_and_shows_their_tasks(gnomon_cli):
    listed = gnomon_cli("plugins", "list", "--json")
    entries = {e["name"]: e for e in json.loads(listed.stdout)}
    for plugin, _, provides in PLUGINS.values():
        assert plugin in entries, INSTALL_HINT
        assert entries[plugin]["source"] == "entry point" and not entries[plugin]["broken"]
        assert entries[plugin]["provides"] == provides
    shown = json.loads(gnomon_cli("tasks", "show", "fgm", "--json").stdout)
    assert shown["x-plugin"] == "fgm" and "model" in shown["required"]
    assert {"eps", "eps_step", "norm", "targeted", "target_class", "batch_size", "seed"} <= set(shown["properties"])
    assert "mlp" in json.loads(gnomon_cli("tasks", "show", "train", "--json").stdout)[
        "properties"]["model_architecture"]["enum"]


def test_cli_runs_a_contrib_task(gnomon_cli, gnomon_image_folder):
    folder = gnomon_image_folder(n_classes=2, per_class=3)
    ran = gnomon_cli("run", "feature_squeezing", "-P", f"data_dir={folder}", "-P", "feature_squeezing_bit_depth=1",
                     "--json")
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.stdout)
    assert result["status"] == "FINISHED" and result["metrics"]["n_defended"] == 6
    assert result["outputs"]["dataset_tar_name"] == "feature_squeezing_dataset.tar.gz"
    bad = gnomon_cli("run", "fgm", "-P", "eps=0")
    assert bad.exit_code == 2 and "eps" in bad.stderr and "model" in bad.stderr


_RUN_FROM_BUNDLE = """
import json, sys
from gnomon.core.engine import Engine
from gnomon.core.plugins import load_plugins
plugins = load_plugins(environ={}, plugin_path=[sys.argv[1]])
result = Engine(plugins, show_progress=False).run("feature_squeezing", {"data_dir": sys.argv[2]})
info = plugins.infos["feature_squeezing"]
print(json.dumps({"source": info.source, "shadows": info.shadows, "status": result.status,
                  "file": sys.modules["gnomon_feature_squeezing"].__file__, "n": result.metrics["n_defended"]}))
"""


def test_synced_bundle_runs_like_on_a_worker(tmp_path, gnomon_image_folder):
    """What 'gnomon plugins sync' uploads and a worker pulls: the bundle alone runs the task."""
    from gnomon.core.plugins import load_plugins
    from gnomon.core.remote.bundle import build_bundle, extract_bundle

    info = load_plugins(environ={}).infos["feature_squeezing"]
    bundle = build_bundle(info)
    pulled = tmp_path / "plugin-cache"
    extract_bundle(bundle.data, pulled, "feature_squeezing")
    folder = gnomon_image_folder(n_classes=2, per_class=2)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "GNOMON_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", _RUN_FROM_BUNDLE, str(pulled), str(folder)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["source"] == "directory" and "entry point" in out["shadows"]
    assert Path(out["file"]).is_relative_to(pulled)  # the synced copy, not the installed one
    assert (out["status"], out["n"]) == ("FINISHED", 4.0)


WORKFLOW = """
[workflow]
name = "squeeze_twice"
description = "Two feature-squeezing steps, the second reading the first one's dataset artifact."

[vars]
data_dir = ""
first_bits = 4

[steps.first]
task = "feature_squeezing"
params = { data_dir = "${vars.data_dir}", feature_squeezing_bit_depth = "${vars.first_bits}" }

[steps.second]
task = "feature_squeezing"
params = { load_dataset_from_mlruns = true, dataset_run_id = "${steps.first.run_id}", feature_squeezing_bit_depth = 1, dataset_tar_name = "${steps.first.outputs.dataset_tar_name}", dataset_name = "${steps.first.outputs.dataset_name}" }
"""


def test_contrib_task_runs_in_a_workflow(gnomon_cli, gnomon_image_folder, tmp_path):
    from gnomon.core.datasets import read_dataset_artifact
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    folder = gnomon_image_folder(n_classes=2, per_class=3)
    workflow = tmp_path / "squeeze_twice.toml"
    workflow.write_text(WORKFLOW)
    ran = gnomon_cli("workflow", "run", str(workflow), "-P", f"data_dir={folder}", "-P", "first_bits=3",
                     "--no-report", "--json")
    assert ran.exit_code == 0, ran.output
    result = json.loads(ran.stdout)
    assert result["status"] == "FINISHED"
    first, second = result["steps"]
    assert [s["task"] for s in result["steps"]] == ["feature_squeezing"] * 2
    assert second["params"]["dataset_run_id"] == first["run_id"] and second["inputs"] == {"first": first["run_id"]}
    engine = Engine(load_plugins(environ={}), show_progress=False)
    out = read_dataset_artifact(engine, second["run_id"], second["outputs"]["dataset_tar_name"],
                                second["outputs"]["dataset_name"])
    assert [d["options"]["bit_depth"] for d in out.metadata["defenses"]] == [3, 1]
    assert set(out.x.ravel().tolist()) <= {0.0, 1.0}
