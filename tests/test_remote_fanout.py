# ruff: noqa: F811  (pytest fixtures imported from servers.py are redefined as test arguments)
"""Workflow steps fanned out over RQ workers, end to end on real servers.

Redis, a SeaweedFS S3 store behind a real ``mlflow server`` with proxied artifacts, and two
``gnomon worker`` processes, each with its own HOME, GNOMON_HOME and plugin cache: the only
things they share are Redis and the tracking server, so a step can only see an earlier step's
outputs and artifacts through MLflow.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import mlflow_server, redis_server, s3_server, write_demo_plugin  # noqa: E402,F401
from test_remote_jobs import Worker, _cli, _env  # noqa: E402

pytestmark = pytest.mark.servers
FAST = ("--heartbeat", "1", "--abandoned-after", "2", "--maintenance-interval", "1")
#: the shipped MNIST sample: the only MNIST a TensorFlow step on a worker (or the submitter's check) may read
MNIST_SAMPLE = str(Path(__file__).parent / "data" / "mnist_sample")

DIAMOND = """
[workflow]
name = "diamond"
description = "a feeds b (an output) and c (an artifact); d uses both."

[vars]
seed = 1

[steps.a]
task = "remote_demo"
params = { n = 5, seed = "${vars.seed}" }

[steps.b]
task = "remote_demo"
params = { n = 3, seed = 2, offset = "${steps.a.outputs.total}", sleep_s = 1.5 }

[steps.c]
task = "remote_demo"
params = { n = 4, seed = 3, input_run = "${steps.a.run_id}", sleep_s = 1.5 }

[steps.d]
task = "remote_demo"
params = { n = 2, seed = "${vars.seed}", offset = "${steps.b.outputs.total}", input_run = "${steps.c.run_id}" }

[steps.m]
task = "remote_demo"
matrix = { k = [1, 2] }
params = { n = "${matrix.k}", seed = 5, offset = "${steps.d.outputs.total}" }

[steps.p]
task = "remote_demo"
matrix = { k = [1, 2] }
params = { n = 1, seed = 6, input_run = "${steps.m.run_id}" }
"""
STEPS = {"a", "b", "c", "d", "m[k=1]", "m[k=2]", "p[k=1]", "p[k=2]"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, redis_server, mlflow_server):
    """Plugins synced (demo plugin included) and two workers on their own queue, homes and caches."""
    root = tmp_path_factory.mktemp("fanout")
    site = write_demo_plugin(root / "site", marker="v1")
    url = f"s3://{s3_server.bucket}/fanout-{uuid.uuid4().hex[:6]}"
    submit_env = _env(s3_server, root / "submitter", PYTHONPATH=str(site), MLFLOW_TRACKING_URI=mlflow_server.url,
                      GNOMON_REDIS_URL=redis_server.url, GNOMON_PLUGINS_URL=url, GNOMON_MNIST_SOURCE=MNIST_SAMPLE)
    synced = _cli(["plugins", "sync", url, "--json"], submit_env)
    assert synced.returncode == 0, synced.stderr
    queue = f"fan-{uuid.uuid4().hex[:6]}"
    workers = []
    for name in ("w1", "w2"):
        env = _env(s3_server, root / f"{name}-home", MLFLOW_TRACKING_URI=mlflow_server.url,
                   GNOMON_MNIST_SOURCE=MNIST_SAMPLE)
        workers.append(Worker(root / name, env, redis_server.url, queue, url, "--name",
                              f"{name}-{queue}", *FAST))
    for w in workers:
        w.wait_ready()
    yield {"root": root, "url": url, "env": submit_env, "queue": queue, "workers": workers,
           "redis": redis_server, "mlflow": mlflow_server, "s3": s3_server}
    for w in workers:
        w.stop()


def _client(stack):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=stack["mlflow"].url)


def _connection(stack):
    from gnomon.core.remote.jobs import connect

    return connect(stack["redis"].url)


def _flow(stack, text: str, name: str) -> Path:
    path = stack["root"] / f"{name}-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text)
    return path


def _submit(stack, path: Path, *extra: str) -> dict:
    out = _cli(["workflow", "run", str(path), "--queue", stack["queue"], "--json", *extra], stack["env"])
    assert out.returncode == 0, out.stderr + out.stdout
    return json.loads(out.stdout)


def _status(stack, run_id: str, wait: bool = False) -> dict:
    out = _cli(["workflow", "status", run_id, "--json", *(["--wait"] if wait else [])], stack["env"])
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _step_runs(stack, parent_id: str) -> dict[str, list]:
    client = _client(stack)
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`gnomon.workflow.run_id` = '{parent_id}'")
    out: dict[str, list] = {}
    for run in runs:
        out.setdefault(run.data.tags["gnomon.workflow.step"], []).append(run)
    return out


def _wait_started(stack, run_id: str, step: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = _status_api(stack, run_id)
        entry = next(s for s in info["steps"] if s["step"] == step)
        runs = _step_runs(stack, run_id).get(step)
        if entry["status"] == "started" and runs and runs[0].info.status == "RUNNING":
            return entry
        assert time.monotonic() < deadline, f"step {step} did not start: {info}"
        time.sleep(0.2)


def _status_api(stack, run_id: str) -> dict:
    from gnomon.core.remote.fanout import workflow_status

    return workflow_status(_connection(stack), run_id)


def test_steps_run_as_separate_jobs_in_parallel_and_pass_data_through_mlflow(stack, tmp_path):
    path = _flow(stack, DIAMOND, "diamond")
    submitted = _submit(stack, path, "-P", "seed=4")
    run_id = submitted["run_id"]
    assert set(submitted["jobs"]) == STEPS and submitted["manifest"]
    info = _status(stack, run_id, wait=True)
    assert info["state"] == "finished", info
    by_step = {s["step"]: s for s in info["steps"]}
    assert all(s["status"] == "finished" and s["run_id"] and s["attempts"] == 1 for s in by_step.values())
    assert {s["worker"] for s in by_step.values()} <= {_name_of(w) for w in stack["workers"]}

    # b and c ran at the same time, on the two workers
    runs = {name: rs[0] for name, rs in _step_runs(stack, run_id).items()}
    assert set(runs) == STEPS and all(len(rs) == 1 for rs in _step_runs(stack, run_id).values())
    b, c = runs["b"].info, runs["c"].info
    assert b.start_time < c.end_time and c.start_time < b.end_time, "b and c did not overlap"
    assert by_step["b"]["worker"] != by_step["c"]["worker"]

    # each run is a child of the parent, which is FINISHED with its report and steps.json
    client = _client(stack)
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["steps_ran"] == len(STEPS)
    assert all(r.data.tags["mlflow.parentRunId"] == run_id for r in runs.values())
    artifacts = {a.path for a in client.list_artifacts(run_id, "report")}
    assert "report/report.html" in artifacts
    steps_json = json.loads(Path(client.download_artifacts(run_id, "workflow/steps.json", str(tmp_path))).read_text())
    assert [s["status"] for s in steps_json["steps"]] == ["ran"] * len(STEPS)

    # the same workflow in one local process (embedded store) gives the same numbers for the same seeds
    local_env = _env(stack["s3"], tmp_path / "local", PYTHONPATH=str(stack["root"] / "site"))
    local = _cli(["workflow", "run", str(path), "-P", "seed=4", "--json", "--no-report"], local_env)
    assert local.returncode == 0, local.stderr
    local_totals = {s["name"]: s["outputs"]["total"] for s in json.loads(local.stdout)["steps"]}
    remote_totals = {name: int(run.data.tags["gnomon.output.total"]) for name, run in runs.items()}
    assert remote_totals == local_totals
    # and the values really flowed: b added a's total, c read a's artifact, d both of theirs
    assert runs["c"].data.metrics["inherited"] > 0 and runs["d"].data.metrics["inherited"] > 0
    # matrix expansions are paired axis by axis across jobs: p[k=2] read the artifact of m[k=2] (2 draws)
    assert runs["p[k=2]"].data.metrics["inherited"] == sum(
        json.loads(Path(client.download_artifacts(runs["m[k=2]"].info.run_id, "demo/draws.json",
                                                  str(tmp_path / "m2"))).read_text())["draws"])


def test_a_killed_worker_step_is_retried_alone(stack):
    text = """
[steps.first]
task = "remote_demo"
params = { n = 3, seed = 1 }

[steps.slow]
task = "remote_demo"
params = { n = 3, seed = 2, sleep_s = 6, offset = "${steps.first.outputs.total}" }

[steps.last]
task = "remote_demo"
params = { n = 3, seed = 3, offset = "${steps.slow.outputs.total}" }
"""
    run_id, info = kill_worker_running(stack, lambda: _submit(stack, _flow(stack, text, "killme"))["run_id"],
                                       lambda run_id: _wait_started(stack, run_id, "slow"))
    by_step = {s["step"]: s for s in info["steps"]}
    assert info["state"] == "finished", info
    assert by_step["slow"]["attempts"] == 2 and by_step["first"]["attempts"] == 1 and by_step["last"]["attempts"] == 1
    runs = _step_runs(stack, run_id)
    assert len(runs["first"]) == 1 and len(runs["last"]) == 1  # finished steps were not re-run
    assert sorted(r.info.status for r in runs["slow"]) == ["FAILED", "FINISHED"]
    killed = next(r for r in runs["slow"] if r.info.status == "FAILED")
    assert "worker died" in killed.data.tags["gnomon.error"]
    assert _client(stack).get_run(run_id).info.status == "FINISHED"


def kill_worker_running(stack, submit, started) -> tuple[str, dict]:
    """With a third worker listening, ``submit()`` a workflow (returns its run id), SIGKILL the worker running
    the job ``started(run_id)`` waits for (and returns the status entry of), and wait for the workflow to end.
    Returns the run id and its final status. The stack keeps two workers."""
    extra = Worker(stack["root"] / "w3", _worker_env(stack, "w3"),
                   stack["redis"].url, stack["queue"], stack["url"], "--name", f"w3-{stack['queue']}", *FAST)
    extra.wait_ready()
    run_id = submit()
    entry = started(run_id)
    victim = next(w for w in stack["workers"] + [extra] if _name_of(w) == entry["worker"])
    try:
        victim.kill()
        return run_id, _status(stack, run_id, wait=True)
    finally:
        if victim is not extra:  # keep two workers for the other tests
            again = f"again{uuid.uuid4().hex[:4]}"
            stack["workers"][stack["workers"].index(victim)] = Worker(
                stack["root"] / again, _worker_env(stack, again), stack["redis"].url, stack["queue"], stack["url"],
                "--name", f"{again}-{stack['queue']}", *FAST).wait_ready()
        extra.stop()


def _name_of(worker) -> str:
    args = worker.proc.args
    return args[args.index("--name") + 1]


def _worker_env(stack, name: str) -> dict:
    return _env(stack["s3"], stack["root"] / f"{name}-home", MLFLOW_TRACKING_URI=stack["mlflow"].url,
                GNOMON_MNIST_SOURCE=MNIST_SAMPLE)


def test_a_failing_step_ends_the_workflow_and_cancels_what_waits(stack):
    text = """
[steps.first]
task = "remote_demo"
params = { n = 3 }

[steps.bad]
task = "remote_demo"
params = { fail = true, offset = "${steps.first.outputs.total}" }

[steps.after]
task = "remote_demo"
params = { offset = "${steps.bad.outputs.total}" }
"""
    path = _flow(stack, text, "failing")
    out = _cli(["workflow", "run", str(path), "--queue", stack["queue"], "--wait", "--json"], stack["env"])
    assert out.returncode == 1 and "failed" in out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    info = _status_api(stack, run_id)
    by_step = {s["step"]: s for s in info["steps"]}
    assert info["state"] == "failed"
    assert (by_step["first"]["status"], by_step["bad"]["status"], by_step["after"]["status"]) == \
        ("finished", "failed", "canceled")
    assert by_step["bad"]["attempts"] == 1  # a task that raises is not retried
    parent = _client(stack).get_run(run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["gnomon.failed_step"] == "bad"
    assert "failed on purpose" in parent.data.tags["gnomon.error"]
    runs = _step_runs(stack, run_id)
    assert [r.info.status for r in runs["bad"]] == ["FAILED"] and "after" not in runs


def test_cancel_stops_running_steps_and_cancels_queued_ones(stack):
    text = """
[steps.long]
task = "remote_demo"
params = { sleep_s = 30 }

[steps.next]
task = "remote_demo"
params = { offset = "${steps.long.outputs.total}" }
"""
    run_id = _submit(stack, _flow(stack, text, "cancel"))["run_id"]
    _wait_started(stack, run_id, "long")
    out = _cli(["workflow", "cancel", run_id], stack["env"])
    assert out.returncode == 0, out.stderr
    assert "long: stop requested" in out.stdout and "next: canceled" in out.stdout
    info = _status(stack, run_id, wait=True)
    by_step = {s["step"]: s for s in info["steps"]}
    assert info["state"] == "canceled"
    assert (by_step["long"]["status"], by_step["next"]["status"]) == ("stopped", "canceled")
    deadline = time.monotonic() + 20
    while _step_runs(stack, run_id)["long"][0].info.status == "RUNNING":
        assert time.monotonic() < deadline, "the running step's run was not marked KILLED"
        time.sleep(0.3)
    assert _step_runs(stack, run_id)["long"][0].info.status == "KILLED"
    assert _client(stack).get_run(run_id).info.status == "KILLED"
    again = _cli(["workflow", "cancel", run_id], stack["env"])
    assert again.returncode == 1 and "already ended" in again.stderr


def test_fanning_out_needs_a_shared_tracking_server(stack):
    from gnomon.core.remote.jobs import queue

    env = {k: v for k, v in stack["env"].items() if k != "MLFLOW_TRACKING_URI"}
    name = f"nobody-{uuid.uuid4().hex[:6]}"
    out = _cli(["workflow", "run", str(_flow(stack, DIAMOND, "diamond")), "--queue", name], env)
    assert out.returncode == 1 and "MLFLOW_TRACKING_URI" in out.stderr
    bad = _cli(["workflow", "run", str(_flow(stack, DIAMOND, "diamond")), "--queue", name, "-P", "sed=1"],
               stack["env"])
    assert bad.returncode == 2 and "unknown workflow variable" in bad.stderr
    assert queue(_connection(stack), name).count == 0
