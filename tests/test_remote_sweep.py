# ruff: noqa: F811  (pytest fixtures imported from other test modules are redefined as test arguments)
"""A sweep on RQ workers, end to end on real servers: one job per distinct step across combinations.

Redis, SeaweedFS behind a real ``mlflow server`` and two ``gnomon worker`` processes with their
own homes (the ``stack`` of test_remote_fanout). A 2 x 2 sweep of the light ``remote_demo``
task: the step that depends only on the seed is shared by two combinations and must run once
per seed; the leaderboard built by the last job must equal the local sweep's. A worker killed
mid-step inside a sweep: that step alone is retried and the sharing stays right.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import mlflow_server, redis_server, s3_server  # noqa: E402,F401
from test_remote_fanout import _client, _flow, _status_api, kill_worker_running, stack  # noqa: E402,F401
from test_remote_jobs import _cli, _env  # noqa: E402

pytestmark = pytest.mark.servers

SWEEP = """
[workflow]
name = "demo_sweep"
description = "base depends only on the seed (shared across n); probe and clean use it."

[vars]
seed = 0
n = 3

[report]
accuracy_metric = "mean"
asr_metric = "inherited"

[steps.base]
task = "remote_demo"
params = { n = 4, seed = "${vars.seed}" }

[steps.probe]
task = "remote_demo"
params = { n = "${vars.n}", seed = 7, input_run = "${steps.base.run_id}" }
report = { model = "demo", data = "triggered" }

[steps.clean]
task = "remote_demo"
params = { n = "${vars.n}", seed = "${vars.seed}", offset = "${steps.base.outputs.total}" }
report = { model = "demo", data = "clean" }
"""
AXES = ("--sweep", "seed=0,1", "--sweep", "n=2,5")


def test_sweep_runs_each_distinct_step_once_on_workers_and_matches_the_local_leaderboard(stack, tmp_path):
    path = _flow(stack, SWEEP, "demo_sweep")
    experiment = f"sweep-{uuid.uuid4().hex[:6]}"
    submitted = submit_sweep(stack, path, experiment, *AXES)
    sweep_id = submitted["run_id"]
    assert submitted["sweep"] is True
    assert len(submitted["jobs"]) == 10  # 12 steps in 4 combinations; base is shared per seed

    status = _cli(["workflow", "status", sweep_id, "--wait", "--json"], stack["env"])
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "finished", info
    assert all(s["status"] == "finished" for s in info["steps"])
    workers = {s["worker"] for s in info["steps"]}
    assert len(workers) == 2, f"both workers should have taken key jobs: {workers}"

    client = _client(stack)
    sweep_run = client.get_run(sweep_id)
    assert sweep_run.info.status == "FINISHED"
    assert sweep_run.data.metrics["steps_ran"] == 10 and sweep_run.data.metrics["steps_shared"] == 2
    exp_id = sweep_run.info.experiment_id
    combos = client.search_runs([exp_id], filter_string=f"tags.`gnomon.sweep.parent` = '{sweep_id}'")
    assert len(combos) == 4 and all(c.info.status == "FINISHED" for c in combos)
    assert all(c.data.tags["mlflow.parentRunId"] == sweep_id for c in combos)

    # shared steps ran exactly once: one base run per seed in the whole experiment, used by both n values
    base_runs = client.search_runs([exp_id], filter_string="tags.`gnomon.workflow.step` = 'base'")
    assert len(base_runs) == 2
    step_runs = client.search_runs([exp_id], filter_string="tags.`gnomon.workflow.step` != ''")
    assert len(step_runs) == 10
    by_seed: dict[str, set[str]] = {}
    for combo in combos:
        tags = combo.data.tags
        assert all(tags[f"gnomon.step.{s}.run_id"] for s in ("base", "probe", "clean"))
        by_seed.setdefault(tags["gnomon.sweep.var.seed"], set()).add(tags["gnomon.step.base.run_id"])
    assert {k: len(v) for k, v in by_seed.items()} == {"0": 1, "1": 1}
    statuses = sorted(c.data.tags["gnomon.step.base.status"] for c in combos)
    assert statuses == ["ran", "ran", "shared", "shared"]
    assert "report/leaderboard.html" in {a.path for a in client.list_artifacts(sweep_id, "report")}

    # the same sweep in one local process (embedded store): the same leaderboard, figure for figure
    local_env = _env(stack["s3"], tmp_path / "local", PYTHONPATH=str(stack["root"] / "site"))
    local = _cli(["workflow", "run", str(path), *AXES, "--json", "--no-progress"], local_env)
    assert local.returncode == 0, local.stderr
    local_board = json.loads(local.stdout)["leaderboard"]
    report = _cli(["report", sweep_id, "--json", "--no-log", "-e", experiment, "--output",
                   str(tmp_path / "board")], stack["env"])
    assert report.returncode == 0, report.stderr
    remote_board = json.loads(report.stdout)
    assert remote_board["rows"] and remote_board["defenses"] == local_board["defenses"] == ["none"]
    assert remote_board["rows"] == local_board["rows"]
    cell = remote_board["rows"][0]["cells"]["none"]
    assert cell["CA"]["n"] == 2 and cell["ASR"]["mean"] > 0  # two seeds, probe read base's artifact


FAILING = """
[vars]
seed = 0
boom = false

[steps.base]
task = "remote_demo"
params = { n = 2, seed = "${vars.seed}" }

[steps.last]
task = "remote_demo"
params = { n = 2, seed = 3, fail = "${vars.boom}", offset = "${steps.base.outputs.total}" }
"""


def test_a_failed_step_ends_the_sweep_and_every_combination_failed(stack):
    path = _flow(stack, FAILING, "failing_sweep")
    experiment = f"sweepfail-{uuid.uuid4().hex[:6]}"
    submitted = submit_sweep(stack, path, experiment, "--sweep", "boom=false,true")
    sweep_id = submitted["run_id"]
    assert len(submitted["jobs"]) == 3  # base is shared by both combinations
    status = _cli(["workflow", "status", sweep_id, "--wait", "--json"], stack["env"])
    info = json.loads(status.stdout)
    assert info["state"] == "failed", info
    client = _client(stack)
    sweep_run = client.get_run(sweep_id)
    assert sweep_run.info.status == "FAILED" and "fail" in sweep_run.data.tags["gnomon.error"]
    combos = client.search_runs([sweep_run.info.experiment_id],
                                filter_string=f"tags.`gnomon.sweep.parent` = '{sweep_id}'")
    assert len(combos) == 2 and {c.info.status for c in combos} == {"FAILED"}


KILLED = """
[vars]
seed = 0
n = 2

[steps.first]
task = "remote_demo"
params = { n = 2, seed = "${vars.seed}" }

[steps.slow]
task = "remote_demo"
params = { n = 3, seed = 2, sleep_s = 8, offset = "${steps.first.outputs.total}" }

[steps.last]
task = "remote_demo"
params = { n = "${vars.n}", seed = 3, offset = "${steps.slow.outputs.total}" }
"""


def test_a_worker_killed_mid_step_in_a_sweep_retries_that_step_alone(stack):
    """first and slow are shared by both combinations (one job each); the worker running slow is SIGKILLed."""
    path = _flow(stack, KILLED, "killed_sweep")
    experiment = f"sweepkill-{uuid.uuid4().hex[:6]}"
    client = _client(stack)
    submitted: dict = {}

    def submit() -> str:
        submitted.update(submit_sweep(stack, path, experiment, "--sweep", "n=2,3"))
        return submitted["run_id"]

    def slow_started(sweep_id: str) -> dict:
        slow = next(name for name in submitted["jobs"] if name.startswith("slow@"))
        exp_id = client.get_experiment_by_name(experiment).experiment_id
        deadline = time.monotonic() + 60
        while True:
            entry = next(s for s in _status_api(stack, sweep_id)["steps"] if s["step"] == slow)
            running = [r for r in _runs_of(client, exp_id, "slow") if r.info.status == "RUNNING"]
            if entry["status"] == "started" and running:
                return entry
            assert time.monotonic() < deadline, f"{slow} did not start: {entry}"
            time.sleep(0.2)

    sweep_id, info = kill_worker_running(stack, submit, slow_started)
    assert len(submitted["jobs"]) == 4  # first and slow once, last per combination
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    assert info["state"] == "finished", info
    attempts = {s["step"].split("@")[0]: s["attempts"] for s in info["steps"]}
    assert attempts == {"first": 1, "slow": 2, "last": 1}, info["steps"]

    # the killed attempt's run FAILED, the retry's FINISHED; no other step ran twice
    runs = {step: _runs_of(client, exp_id, step) for step in ("first", "slow", "last")}
    assert len(runs["first"]) == 1 and len(runs["last"]) == 2
    assert sorted(r.info.status for r in runs["slow"]) == ["FAILED", "FINISHED"]
    killed = next(r for r in runs["slow"] if r.info.status == "FAILED")
    assert "worker died" in killed.data.tags["gnomon.error"]
    finished = next(r for r in runs["slow"] if r.info.status == "FINISHED").info.run_id

    # dedup stayed correct: both combinations use the one finished run of each shared step
    combos = client.search_runs([exp_id], filter_string=f"tags.`gnomon.sweep.parent` = '{sweep_id}'")
    assert len(combos) == 2 and {c.info.status for c in combos} == {"FINISHED"}
    assert {c.data.tags["gnomon.step.slow.run_id"] for c in combos} == {finished}
    assert {c.data.tags["gnomon.step.first.run_id"] for c in combos} == {runs["first"][0].info.run_id}
    assert sorted(c.data.tags["gnomon.step.slow.status"] for c in combos) == ["ran", "shared"]
    assert {c.data.tags["gnomon.step.last.run_id"] for c in combos} == {r.info.run_id for r in runs["last"]}
    sweep_run = client.get_run(sweep_id)
    assert sweep_run.info.status == "FINISHED"
    assert (sweep_run.data.metrics["steps_ran"], sweep_run.data.metrics["steps_shared"]) == (4, 2)


def submit_sweep(stack, path, experiment: str, *args: str) -> dict:
    """``gnomon workflow run PATH ARGS --queue Q -e EXPERIMENT --json`` on the stack: the submission."""
    out = _cli(["workflow", "run", str(path), *args, "--queue", stack["queue"], "-e", experiment, "--json"],
               stack["env"])
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def _runs_of(client, exp_id: str, step: str) -> list:
    return client.search_runs([exp_id], filter_string=f"tags.`gnomon.workflow.step` = '{step}'")
