# ruff: noqa: F811  (pytest fixtures imported from servers.py are redefined as test arguments)
"""Jobs end to end on real servers: SeaweedFS (S3), Redis (RQ) and ``mlflow server``.

The demo plugin (``servers.write_demo_plugin``) is "installed" only in the submitting
environment (its folder on PYTHONPATH, with a real .dist-info entry point); workers run in
separate processes with their own HOME, plugin cache and no access to it, so they can only
run it because it was synced.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import mlflow_server, redis_server, s3_server, write_demo_plugin  # noqa: E402,F401

pytestmark = pytest.mark.servers
GNOMON = str(Path(sys.executable).parent / "gnomon")


def _env(s3, home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "GNOMON_", "MLFLOW_")) and k != "PYTHONPATH"}
    env.update(s3.env())
    env.update({"HOME": str(home), "GNOMON_HOME": str(home / ".gnomon"), "COLUMNS": "250"})
    env.update(extra)
    home.mkdir(parents=True, exist_ok=True)
    return env


def _cli(args, env, timeout=180):
    return subprocess.run([GNOMON, *args], capture_output=True, text=True, env=env, timeout=timeout)


class Worker:
    """``gnomon worker`` in its own process group, HOME and plugin cache."""

    def __init__(self, root: Path, env: dict, redis_url: str, queue: str, url: str, *extra: str):
        root.mkdir(parents=True, exist_ok=True)
        self.log = root / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.handle = open(self.log, "w")
        self.proc = subprocess.Popen(
            [GNOMON, "worker", "--redis", redis_url, "--queue", queue, "--plugins", url,
             "--cache", str(root / "worker-cache"), *extra],
            env=env, stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.redis_url, self.queue = redis_url, queue

    def wait_ready(self, timeout: float = 90) -> Worker:
        import redis
        from rq import Worker as RQWorker

        connection = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.log.read_text()[-3000:]}")
            if any(w.pid == self.proc.pid for w in RQWorker.all(connection=connection)):
                return self
            time.sleep(0.2)
        raise AssertionError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the worker, its work horse (RQ puts it in its own process group) and every other
        descendant at once, like a machine dying."""
        pids = _descendants(self.proc.pid) + [self.proc.pid]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.handle.close()


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory, s3_server, redis_server, mlflow_server):
    """Plugins synced (demo plugin included), and one worker on queue ``e2e`` using the tracking server."""
    root = tmp_path_factory.mktemp("remote-jobs")
    site = write_demo_plugin(root / "site", marker="v1")
    url = f"s3://{s3_server.bucket}/jobs-{uuid.uuid4().hex[:6]}"
    submit_env = _env(s3_server, root / "submitter", PYTHONPATH=str(site), MLFLOW_TRACKING_URI=mlflow_server.url)
    synced = _cli(["plugins", "sync", url, "--json"], submit_env)
    assert synced.returncode == 0, synced.stderr
    report = json.loads(synced.stdout)
    assert "remote_demo" in [u["plugin"] for u in report["uploaded"]]
    worker_env = _env(s3_server, root / "worker-home", MLFLOW_TRACKING_URI=mlflow_server.url)
    worker = Worker(root / "w1", worker_env, redis_server.url, "e2e", url).wait_ready()
    yield {"synced": report["uploaded"], "root": root, "site": site, "url": url, "manifest": report["manifest"], "submit_env": submit_env,
           "worker_env": worker_env, "worker": worker, "s3": s3_server, "redis": redis_server, "mlflow": mlflow_server}
    worker.stop()


def _connection(stack):
    from gnomon.core.remote.jobs import connect

    return connect(stack["redis"].url)


def _runs(stack, job_id: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack["mlflow"].url)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(experiments, filter_string=f"tags.`gnomon.job_id` = '{job_id}'")


@pytest.mark.slow
def test_end_to_end_synced_plugin_runs_on_worker(stack):
    env = stack["submit_env"]
    done = _cli(["submit", "remote_demo", "-P", "n=7", "-P", "seed=3", "--queue", "e2e", "--redis",
                 stack["redis"].url, "--plugins", stack["url"], "--wait", "--wait-timeout", "120", "--json"], env)
    assert done.returncode == 0, done.stderr + done.stdout
    info = json.loads(done.stdout)
    assert info["status"] == "finished" and info["run_id"]
    assert info["submitted_manifest"] == info["manifest"] == stack["manifest"]
    assert info["result"]["outputs"] == {"marker": "v1", "total": info["result"]["outputs"]["total"]}
    synced = {e["plugin"] for e in stack["synced"]}
    # the builtin package ships as one bundle and loads as its parts (builtin.models, ...)
    assert {name.partition(".")[0] for name in info["plugins"]} == synced
    assert "builtin.models" in info["plugins"] and not any(p["broken"] for p in info["plugins"].values())

    # the run, its metrics and its artifact are on the tracking server...
    client, runs = _runs(stack, info["id"])
    (run,) = runs
    assert run.info.run_id == info["run_id"] and run.info.status == "FINISHED"
    assert run.data.metrics["n"] == 7.0 and 0 <= run.data.metrics["mean"] <= 99
    assert run.data.tags["gnomon.plugin"] == "remote_demo" and run.data.tags["gnomon.plugin_version"] == "0.1.0"
    assert run.data.tags["gnomon.manifest"] == stack["manifest"]
    local = client.download_artifacts(run.info.run_id, "demo/draws.json", str(stack["root"] / "dl"))
    draws = json.loads(Path(local).read_text())
    assert draws["marker"] == "v1" and len(draws["draws"]) == 7 and sum(draws["draws"]) == info["result"]["outputs"]["total"]
    # ... and the artifact bytes are in S3
    s3 = stack["s3"].client()
    objects = s3.list_objects_v2(Bucket=stack["s3"].bucket, Prefix="mlflow-artifacts/").get("Contents", [])
    assert any(run.info.run_id in o["Key"] and o["Key"].endswith("demo/draws.json") for o in objects)
    # the worker ran the synced copy from its own cache, never the submitter's folder
    worker_cache = stack["root"] / "w1" / "worker-cache"
    assert (worker_cache / "sets" / stack["manifest"] / "remote_demo" / "_src" / "gnomon_remote_demo").is_dir()

    # a new sync of a changed plugin: jobs pinned to the old version still get the old code
    write_demo_plugin(stack["site"], marker="v2", version="0.2.0")
    synced = _cli(["plugins", "sync", stack["url"], "--json"], env)
    new_manifest = json.loads(synced.stdout)["manifest"]
    assert [u["plugin"] for u in json.loads(synced.stdout)["uploaded"]] == ["remote_demo"]
    from gnomon.core.remote import jobs

    connection = _connection(stack)
    old = jobs.submit(connection, "remote_demo", {"n": "2"}, queue_name="e2e", manifest_id=stack["manifest"])
    new = jobs.submit(connection, "remote_demo", {"n": "2"}, queue_name="e2e", manifest_id=new_manifest)
    old_info, new_info = jobs.wait(connection, old.id, timeout=120), jobs.wait(connection, new.id, timeout=120)
    assert (old_info["result"]["outputs"]["marker"], old_info["manifest"]) == ("v1", stack["manifest"])
    assert (new_info["result"]["outputs"]["marker"], new_info["manifest"]) == ("v2", new_manifest)
    # the version the worker loaded at start is used as loaded (no pull in the job); another one is pulled
    assert jobs.fetch(connection, old.id).meta["pull_s"] == 0.0
    assert jobs.fetch(connection, new.id).meta["pull_s"] > 0.0


def test_bad_params_never_reach_the_queue(stack):
    from gnomon.core.remote.jobs import queue

    q = queue(_connection(stack), "e2e-bad")
    bad = _cli(["submit", "remote_demo", "-P", "n=0", "-P", "colour=red", "--queue", "e2e-bad",
                "--redis", stack["redis"].url, "--plugins", stack["url"]], stack["submit_env"])
    assert bad.returncode == 2
    assert "n:" in bad.stderr and "colour: unknown parameter" in bad.stderr
    unknown = _cli(["submit", "no_such_task", "--queue", "e2e-bad", "--redis", stack["redis"].url,
                    "--plugins", stack["url"]], stack["submit_env"])
    assert unknown.returncode == 2 and "unknown task 'no_such_task'" in unknown.stderr
    bad_flow = _cli(["submit", "--workflow", "remote_demo_flow", "-P", "nn=3", "--queue", "e2e-bad",
                     "--redis", stack["redis"].url, "--plugins", stack["url"]], stack["submit_env"])
    assert bad_flow.returncode != 0 and "unknown workflow variable" in bad_flow.stderr
    assert q.count == 0 and q.failed_job_registry.count == 0 and q.finished_job_registry.count == 0


@pytest.mark.slow
def test_workflow_job_runs_on_worker(stack):
    """``submit --workflow`` of a registered (synced) workflow: one job per step (more in test_remote_fanout.py)."""
    from gnomon.core.remote import fanout, jobs

    connection = _connection(stack)
    queued = _cli(["submit", "--workflow", "remote_demo_flow", "-P", "n=4", "--queue", "e2e", "--redis",
                   stack["redis"].url, "--plugins", stack["url"], "--json"], stack["submit_env"])
    assert queued.returncode == 0, queued.stderr
    submitted = json.loads(queued.stdout)
    assert submitted["manifest"] and set(submitted["jobs"]) == {"first", "second"}
    info = fanout.wait_workflow(connection, submitted["run_id"], timeout=180)
    assert info["state"] == "finished", info
    for step in info["steps"]:
        job = jobs.describe(jobs.fetch(connection, step["job"]))
        assert job["status"] == "finished" and job["kind"] == "step" and job["workflow_run"] == submitted["run_id"]
        assert job["manifest"] == job["submitted_manifest"] == submitted["manifest"]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=stack["mlflow"].url)
    parent = client.get_run(submitted["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert parent.info.status == "FINISHED" and sorted(c.data.metrics["n"] for c in children) == [3.0, 4.0]


def test_failing_task_fails_job_and_run(stack):
    from gnomon.core.remote import jobs

    connection = _connection(stack)
    job = jobs.submit(connection, "remote_demo", {"fail": "true"}, queue_name="e2e", manifest_id=stack["manifest"])
    info = jobs.wait(connection, job.id, timeout=120)
    assert info["status"] == "failed"
    assert "remote_demo failed on purpose" in info["error"] and info["run_id"]
    shown = _cli(["jobs", "show", job.id, "--redis", stack["redis"].url], stack["submit_env"])
    assert shown.returncode == 0 and "failed on purpose" in shown.stdout and info["run_id"] in shown.stdout
    client, (run,) = _runs(stack, job.id)
    assert run.info.status == "FAILED" and "failed on purpose" in run.data.tags["gnomon.error"]
    listed = _cli(["jobs", "list", "--queue", "e2e", "--redis", stack["redis"].url, "--json"], stack["submit_env"])
    assert {"id": job.id, "status": "failed"}.items() <= next(
        e for e in json.loads(listed.stdout) if e["id"] == job.id).items()


def test_cancel_waiting_and_running_jobs(stack):
    from gnomon.core.remote import jobs

    connection = _connection(stack)
    waiting = jobs.submit(connection, "remote_demo", {}, queue_name="nobody-listens", manifest_id=stack["manifest"])
    out = _cli(["jobs", "cancel", waiting.id, "--redis", stack["redis"].url], stack["submit_env"])
    assert out.returncode == 0 and "canceled" in out.stdout
    assert jobs.status(jobs.fetch(connection, waiting.id)) == "canceled"
    again = _cli(["jobs", "cancel", waiting.id, "--redis", stack["redis"].url], stack["submit_env"])
    assert again.returncode == 1 and "already canceled" in again.stderr

    running = jobs.submit(connection, "remote_demo", {"sleep_s": "30"}, queue_name="e2e", manifest_id=stack["manifest"])
    deadline = time.monotonic() + 60
    while jobs.status(jobs.fetch(connection, running.id)) != "started" or not _runs(stack, running.id)[1]:
        assert time.monotonic() < deadline, "job did not start"
        time.sleep(0.2)
    assert jobs.cancel(connection, running.id) == "stop requested"
    info = jobs.wait(connection, running.id, timeout=30)
    assert info["status"] == "stopped"
    deadline = time.monotonic() + 20
    while _runs(stack, running.id)[1][0].info.status == "RUNNING":
        assert time.monotonic() < deadline, "run not marked KILLED"
        time.sleep(0.3)
    assert _runs(stack, running.id)[1][0].info.status == "KILLED"


@pytest.mark.slow
def test_killed_worker_job_is_retried_or_failed(stack):
    """RQ abandoned-job handling: a job whose worker dies is retried if it has retries left, else failed."""
    from gnomon.core.remote import jobs

    connection = _connection(stack)
    fast = ("--heartbeat", "1", "--abandoned-after", "2", "--maintenance-interval", "1")
    root = stack["root"]
    doomed = [Worker(root / f"k{i}", stack["worker_env"], stack["redis"].url, "killme", stack["url"], *fast)
              for i in range(2)]
    for w in doomed:
        w.wait_ready()
    retried = jobs.submit(connection, "remote_demo", {"sleep_s": "4"}, queue_name="killme",
                          manifest_id=stack["manifest"], retries=1)
    lost = jobs.submit(connection, "remote_demo", {"sleep_s": "4"}, queue_name="killme", manifest_id=stack["manifest"])
    deadline = time.monotonic() + 60
    while not all(_runs(stack, j.id)[1] for j in (retried, lost)):  # both are running, with their MLflow runs
        assert time.monotonic() < deadline, "jobs did not start"
        time.sleep(0.2)
    for w in doomed:
        w.kill()
    assert {jobs.status(jobs.fetch(connection, j.id)) for j in (retried, lost)} == {"started"}
    survivor = Worker(root / "k3", stack["worker_env"], stack["redis"].url, "killme", stack["url"], *fast)
    try:
        survivor.wait_ready()
        done = jobs.wait(connection, retried.id, timeout=90)
        failed = jobs.wait(connection, lost.id, timeout=60)
    finally:
        survivor.stop()
        for w in doomed:
            w.stop()
    assert done["status"] == "finished" and done["attempts"] == 2 and done["error"] is None
    assert failed["status"] == "failed" and "worker died" in failed["error"] and "no retries left" in failed["error"]
    statuses = sorted(r.info.status for r in _runs(stack, retried.id)[1])
    assert statuses == ["FAILED", "FINISHED"]  # the killed attempt, then the retry
    assert [r.info.status for r in _runs(stack, lost.id)[1]] == ["FAILED"]


@pytest.mark.slow
def test_contrib_plugin_runs_on_worker(stack):
    """The contrib feature-squeezing plugin (entry point) runs on the worker from its synced bundle."""
    if "feature_squeezing" not in {e["plugin"] for e in stack["synced"]}:
        pytest.skip("the contrib plugin gnomon-feature-squeezing is not installed here")
    import numpy as np
    from PIL import Image

    data = stack["root"] / "tiny"
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (data / label).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(data / label / f"{i}.png")
    done = _cli(["submit", "feature_squeezing", "-P", f"data_dir={data}", "-P", "feature_squeezing_bit_depth=1",
                 "--queue", "e2e", "--redis", stack["redis"].url, "--plugins", stack["url"], "--wait",
                 "--wait-timeout", "240", "--json"], stack["submit_env"], timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    info = json.loads(done.stdout)
    assert info["status"] == "finished" and info["result"]["metrics"]["n_defended"] == 6.0
    assert info["result"]["metrics"]["linf_max"] > 0  # 1-bit squeezing changed the random images
    client, (run,) = _runs(stack, info["id"])
    assert run.data.tags["gnomon.plugin"] == "feature_squeezing"
    s3 = stack["s3"].client()
    objects = s3.list_objects_v2(Bucket=stack["s3"].bucket, Prefix="mlflow-artifacts/").get("Contents", [])
    assert any(run.info.run_id in o["Key"] and o["Key"].endswith(".tar.gz") for o in objects)
