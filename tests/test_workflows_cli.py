"""`gnomon workflow list|show|validate|run` and `gnomon report` through the real CLI (in-process),
with the builtin dataset_summary task on the shipped MNIST sample and the test tasks as a directory plugin."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SUPPORT = Path(__file__).with_name("test_workflows_support.py")

WORKFLOW = '''
[workflow]
name = "summary_chain"
description = "summarise a folder, then use the count"

[vars]
data_dir = "{data_dir}"
label = "s"

[steps.summary]
task = "dataset_summary"
params = {{ data_dir = "${{vars.data_dir}}" }}

[steps.emit]
task = "wf_emit"
params = {{ value = "${{steps.summary.outputs.n_images}}", label = "${{vars.label}}", epochs = 2 }}

[steps.use]
task = "wf_use"
params = {{ source_run = "${{steps.summary.run_id}}", model = "${{steps.emit.outputs.model_name}}/${{steps.emit.outputs.model_version}}" }}
'''


@pytest.fixture
def cli(gnomon_cli, tmp_path):
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    shutil.copy(SUPPORT, plugin_dir / "wfsupport.py")

    def invoke(*args):
        return gnomon_cli(*args, env={"GNOMON_PLUGIN_PATH": str(plugin_dir)})

    return invoke


@pytest.fixture
def workflow_file(tmp_path, mnist_sample_dirs):
    path = tmp_path / "chain.toml"
    path.write_text(WORKFLOW.format(data_dir=mnist_sample_dirs["testing"]))
    return path


def test_list_and_show_the_builtin_demos(cli):
    result = cli("workflow", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {w["name"]: w for w in json.loads(result.stdout)}
    assert {"baseline", "adversarial_embedding", "clean_label"} <= set(listed)
    assert all(w["plugin"] == "builtin.workflows" and w["steps"] >= 10 for w in listed.values())
    shown = cli("workflow", "show", "baseline", "--json")
    data = json.loads(shown.stdout)
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["train[model=poisoned]"]["task"] == "train"
    assert steps["train[model=poisoned]"]["depends_on"] == ["poison[split=train]"]
    assert steps["train[model=poisoned]"]["base"] == "train"
    assert steps["train[model=poisoned]"]["matrix"] == {"model": "poisoned"}
    assert steps["defend[data=clean,defense=jpeg_compression]"]["task"] == "jpeg_compression"
    assert "epochs" in data["variables"]
    text = cli("workflow", "show", "baseline")
    assert text.exit_code == 0 and "gen_poison_test_data" in text.stdout
    assert "defend[data=triggered,defense=spatial_smoothing]" in text.stdout


def test_run_resume_and_report(cli, workflow_file, tmp_path):
    first = cli("workflow", "run", str(workflow_file), "--json", "-P", "label=q", "--report-dir", tmp_path / "r")
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    steps = {s["name"]: s for s in data["steps"]}
    assert [s["status"] for s in data["steps"]] == ["ran", "ran", "ran"]
    assert steps["summary"]["outputs"]["n_images"] == 300  # the shipped sample's test split
    assert steps["use"]["params"]["model"] == "model_q/300"
    assert steps["use"]["params"]["source_run"] == steps["summary"]["run_id"]
    assert data["report"] == str(tmp_path / "r" / "report.html")

    again = cli("workflow", "run", str(workflow_file), "--json", "-P", "label=q", "--resume", "--no-report")
    assert [s["status"] for s in json.loads(again.stdout)["steps"]] == ["cached"] * 3
    changed = cli("workflow", "run", str(workflow_file), "--json", "-P", "label=z", "--resume", "--no-report")
    assert [s["status"] for s in json.loads(changed.stdout)["steps"]] == ["cached", "ran", "ran"]

    report = cli("report", data["run_id"], "-o", tmp_path / "again")
    assert report.exit_code == 0, report.output
    assert f"report: {tmp_path / 'again' / 'report.html'}" in report.stdout.replace("\n", "")
    assert (tmp_path / "again" / "training_curves.png").stat().st_size > 1000

    human = cli("workflow", "run", str(workflow_file), "-P", "label=q", "--resume", "--no-progress")
    assert human.exit_code == 0
    assert "finished" in human.stdout and "0 steps ran, 3 cached" in human.stdout
    assert "report:" in human.stdout


def test_invalid_workflow_exits_2_naming_step_and_field(cli, workflow_file):
    workflow_file.write_text(workflow_file.read_text().replace("epochs = 2", "epoch = 2"))
    result = cli("workflow", "run", str(workflow_file))
    assert result.exit_code == 2
    assert "step 'emit' (#2, task 'wf_emit'), param 'epoch': unknown parameter; did you mean 'epochs'?" \
        in " ".join(result.stderr.split())
    bad_var = cli("workflow", "run", str(workflow_file), "-P", "lable=x")
    assert bad_var.exit_code == 2 and "did you mean 'label'" in bad_var.stderr
    missing = cli("workflow", "run", "no_such_workflow")
    assert missing.exit_code == 2 and "unknown workflow 'no_such_workflow'" in missing.stderr


def test_failing_step_exits_1_naming_the_step(cli, workflow_file):
    workflow_file.write_text(workflow_file.read_text() + '\n[steps.boom]\ntask = "wf_fail"\nparams = { reason = "out of cheese" }\n')
    result = cli("workflow", "run", str(workflow_file), "--no-progress")
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "stopped at step 'boom' (#4, task 'wf_fail')" in message and "out of cheese" in message
    assert "marked FAILED" in message
