"""The CLI through typer's runner, plus real subprocesses for the start-up budget and a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gnomon.cli import state
from gnomon.cli.main import build_app


@pytest.fixture
def cli(gnomon_home, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    state.reset()
    runner = CliRunner()

    def invoke(*args, env=None):
        state.reset()
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            return runner.invoke(build_app(), list(args), catch_exceptions=False)

    yield invoke
    state.reset()


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.output.startswith("gnomon ")


def test_tasks_list_json(cli):
    result = cli("tasks", "list", "--json")
    assert result.exit_code == 0
    tasks = {t["name"]: t for t in json.loads(result.stdout)}
    assert tasks["dataset_summary"]["plugin"] == "builtin.utility_tasks"


def test_tasks_show_json_schema(cli):
    result = cli("tasks", "show", "dataset_summary", "--json")
    schema = json.loads(result.stdout)
    assert schema["title"] == "dataset_summary" and schema["additionalProperties"] is False
    assert schema["properties"]["seed"]["type"] == "integer"
    assert schema["properties"]["load_dataset_from_mlruns"]["type"] == "boolean"


def test_tasks_show_table(cli):
    result = cli("tasks", "show", "dataset_summary")
    assert result.exit_code == 0 and "data_dir" in result.output and "dataset_tar_name" in result.output


def test_unknown_task_suggests_closest(cli):
    result = cli("run", "dataset_sumary")
    assert result.exit_code == 2
    assert "did you mean 'dataset_summary'" in result.output


def test_bad_params_exit_2_field_by_field_and_no_run(cli, gnomon_home):
    result = cli("run", "dataset_summary", "-P", "seed=abc", "-P", "data_dri=/x")
    assert result.exit_code == 2
    assert "seed: Not a valid integer" in result.output
    assert "data_dri: unknown parameter; did you mean 'data_dir'?" in result.output
    assert not (gnomon_home / "mlflow.db").exists()


def test_run_json_creates_a_real_run(cli, mnist_sample_dirs):
    result = cli("run", "dataset_summary", "-P", f"data_dir={mnist_sample_dirs['testing']}", "--json",
                 "--experiment", "cli-test")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "FINISHED" and payload["metrics"]["n_images"] == 300
    import mlflow

    run = mlflow.MlflowClient().get_run(payload["run_id"])
    assert mlflow.MlflowClient().get_experiment(run.info.experiment_id).name == "cli-test"


def test_missing_folder_is_a_parameter_error(cli, tmp_path, gnomon_home):
    result = cli("run", "dataset_summary", "-P", f"data_dir={tmp_path / 'missing'}")
    assert result.exit_code == 2 and "is not a folder" in result.output
    assert not (gnomon_home / "mlflow.db").exists()


def test_failed_task_exits_nonzero_with_one_line(cli, tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "a" / "x.png").write_text("not an image")
    result = cli("run", "dataset_summary", "-P", f"data_dir={tmp_path / 'data'}")
    assert result.exit_code == 1
    assert "marked FAILED" in result.output and "Traceback" not in result.output
    debug = cli("--debug", "run", "dataset_summary", "-P", f"data_dir={tmp_path / 'data'}")
    assert debug.exit_code == 1 and "Traceback" in debug.output


def test_plugins_list_shows_builtin_and_broken(cli, tmp_path):
    plugdir = tmp_path / "pp"
    plugdir.mkdir()
    (plugdir / "wrecked.py").write_text("raise ImportError('wrecked on purpose')\n")
    result = cli("plugins", "list", "--json", env={"GNOMON_PLUGIN_PATH": str(plugdir)})
    assert result.exit_code == 0
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert entries["builtin.training_tasks"]["provides"]["tasks"] == ["infer", "init_model", "train"]
    assert entries["builtin.models"]["package"] == "builtin"
    assert entries["wrecked"]["broken"] and "wrecked on purpose" in entries["wrecked"]["error"]
    human = cli("plugins", "list", env={"GNOMON_PLUGIN_PATH": str(plugdir)})
    assert "wrecked" in human.output and "broken" in human.output
    # other commands keep working with a broken plugin around, and warn once
    tasks = cli("tasks", "list", env={"GNOMON_PLUGIN_PATH": str(plugdir)})
    assert tasks.exit_code == 0 and tasks.output.count("plugin 'wrecked' is broken") == 1


def test_plugins_list_all_shows_skipped(cli):
    result = cli("plugins", "list", "--all", "--json", env={"GNOMON_DISABLE_PLUGINS": "builtin"})
    payload = json.loads(result.stdout)
    assert {"name": "builtin", "source": "builtin", "reason": "disabled by GNOMON_DISABLE_PLUGINS"} in payload["skipped"]


# markdown_it and pygments come with typer's rich help (about 90 ms): help is plain click to keep start-up fast
HEAVY = ("tensorflow", "keras", "art", "mlflow", "torch", "markdown_it", "pygments")
PROBE = """
import sys
from gnomon.cli.main import main
try:
    main({argv!r})
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})
sys.stderr.write('HEAVY=' + ','.join(heavy) + '\\n')
"""


@pytest.mark.parametrize("argv", [["--help"], ["tasks", "list"], ["tasks", "show", "dataset_summary"],
                                  ["plugins", "list"], ["run", "--help"]])
def test_light_commands_never_import_heavy_libraries(argv, gnomon_home):
    code = PROBE.format(argv=argv, heavy=set(HEAVY))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GNOMON_HOME": str(gnomon_home)})
    heavy_line = [line for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    assert heavy_line == ["HEAVY="], proc.stderr[-2000:]


def test_real_subprocess_run(gnomon_home, mnist_sample_dirs):
    exe = Path(sys.executable).with_name("gnomon")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gnomon.cli.main"]
    proc = subprocess.run(cmd + ["run", "dataset_summary", "-P", f"data_dir={mnist_sample_dirs['training']}", "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "GNOMON_HOME": str(gnomon_home)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metrics"]["n_images"] == 1000
    bad = subprocess.run(cmd + ["run", "dataset_summary", "-P", "seed=x"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "GNOMON_HOME": str(gnomon_home)})
    assert bad.returncode == 2 and "seed" in bad.stderr
