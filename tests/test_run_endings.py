# ruff: noqa: F811  (pytest fixtures imported from servers.py are redefined as test arguments)
"""Every way a run can end leaves it FINISHED, FAILED or KILLED, never RUNNING.

Real ``gnomon`` processes receive real signals (SIGINT, SIGTERM, SIGHUP, SIGKILL) in the middle of
a run, on the embedded store and on a real ``mlflow server``; real RQ workers on a real Redis are
cancelled and killed while their job runs on the embedded store.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import ctrl_c_enabled, mlflow_server, redis_server, s3_server, write_demo_plugin  # noqa: E402,F401

GNOMON = str(Path(sys.executable).parent / "gnomon")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The demo plugin (task ``remote_demo``, which can sleep) "installed" through PYTHONPATH."""
    return write_demo_plugin(tmp_path_factory.mktemp("site"))


def _env(home: Path, site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GNOMON_", "MLFLOW_", "AWS_"))}
    env.update({"GNOMON_HOME": str(home), "PYTHONPATH": str(site), "COLUMNS": "200"})
    env.update(extra)
    return env


class Store:
    """Reads run status and tags from the embedded store or a tracking server."""

    def __init__(self, home: Path, uri: str | None = None):
        self.home, self.uri = home, uri

    def runs(self, task: str = "remote_demo") -> list[tuple[str, str, dict]]:
        if self.uri:
            import mlflow

            client = mlflow.MlflowClient(tracking_uri=self.uri)
            experiments = [e.experiment_id for e in client.search_experiments()]
            found = client.search_runs(experiments, filter_string=f"tags.`gnomon.task` = '{task}'")
            return [(r.info.run_id, r.info.status, dict(r.data.tags)) for r in found]
        db = self.home / "mlflow.db"
        if not db.exists():
            return []
        connection = sqlite3.connect(str(db), timeout=30)
        try:
            rows = connection.execute(
                "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'gnomon.task' AND t.value = ?", (task,)).fetchall()
            out = []
            for run_id, status in rows:
                tags = dict(connection.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
                out.append((run_id, status, tags))
            return out
        except sqlite3.OperationalError:  # the store is being created
            return []
        finally:
            connection.close()

    def wait_for(self, status: str, n: int = 1, timeout: float = 240, exclude=()) -> list[tuple[str, str, dict]]:
        """Runs in ``status``; a RUNNING run counts once its task has started (its ``demo.started`` tag is set)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = [r for r in self.runs() if r[1] == status and r[0] not in exclude
                    and (status != "RUNNING" or "demo.started" in r[2])]
            if len(runs) >= n:
                return runs
            time.sleep(0.3)
        raise AssertionError(f"no {n} {status} run(s) within {timeout} s: {self.runs()}")

    def status(self, run_id: str) -> tuple[str, dict]:
        for rid, status, tags in self.runs():
            if rid == run_id:
                return status, tags
        raise AssertionError(f"run {run_id} not found")


def _start_sleeper(env: dict[str, str], seconds: int = 300) -> subprocess.Popen:
    return subprocess.Popen([GNOMON, "run", "remote_demo", "-P", f"sleep_s={min(seconds, 60)}", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_enabled)


@pytest.mark.parametrize("signame, status, code", [("SIGTERM", "KILLED", -15), ("SIGHUP", "KILLED", -1),
                                                    ("SIGINT", "KILLED", None)])
def test_signal_during_a_run_ends_it(tmp_path, site, signame, status, code):
    home = tmp_path / "home"
    store = Store(home)
    proc = _start_sleeper(_env(home, site))
    try:
        run_id = store.wait_for("RUNNING")[0][0]
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    if code is not None:
        assert proc.returncode == code, err[-2000:]
    else:
        assert proc.returncode != 0
    got, tags = store.status(run_id)
    assert got == status, (got, tags, err[-2000:])
    assert "Traceback" not in err


def test_sigkilled_run_is_marked_failed_by_the_next_process_live_runs_are_left_alone(tmp_path, site):
    home = tmp_path / "home"
    store, env = Store(home), _env(home, site)
    victim, alive = _start_sleeper(env), None
    try:
        victim_id = store.wait_for("RUNNING")[0][0]
        tags = store.status(victim_id)[1]
        assert tags["gnomon.pid"] == str(victim.pid) and tags["gnomon.host"]
        alive = _start_sleeper(env)
        alive_id = store.wait_for("RUNNING", exclude={victim_id})[0][0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        assert store.status(victim_id)[0] == "RUNNING"  # nothing could mark it: SIGKILL
        nxt = subprocess.run([GNOMON, "run", "remote_demo", "-P", "n=2", "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert nxt.returncode == 0, nxt.stderr[-2000:]
        status, tags = store.status(victim_id)
        assert status == "FAILED" and "orphaned" in tags["gnomon.error"] and str(victim.pid) in tags["gnomon.error"]
        assert store.status(alive_id)[0] == "RUNNING"  # its process lives: untouched
        alive.send_signal(signal.SIGTERM)
        alive.wait(timeout=120)
        assert store.status(alive_id)[0] == "KILLED"
    finally:
        for proc in (victim, alive):
            if proc is not None and proc.poll() is None:
                proc.kill()


@pytest.mark.servers
def test_signals_and_orphans_on_a_tracking_server(tmp_path, site, mlflow_server):
    home = tmp_path / "home"
    store = Store(home, mlflow_server.url)
    env = _env(home, site, MLFLOW_TRACKING_URI=mlflow_server.url)
    before = {r[0] for r in store.runs()}
    term = _start_sleeper(env)
    killed = _start_sleeper(env)
    try:
        running = store.wait_for("RUNNING", n=2, exclude=before)
        by_pid = {tags["gnomon.pid"]: rid for rid, _, tags in running}
        term_id, killed_id = by_pid[str(term.pid)], by_pid[str(killed.pid)]
        term.send_signal(signal.SIGTERM)
        killed.send_signal(signal.SIGKILL)
        assert term.wait(timeout=120) == -15
        killed.wait(timeout=30)
        assert store.status(term_id)[0] == "KILLED"
        nxt = subprocess.run([GNOMON, "run", "remote_demo", "-P", "n=2", "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=300)
        assert nxt.returncode == 0, nxt.stderr[-2000:]
        assert store.status(killed_id)[0] == "FAILED"
    finally:
        for proc in (term, killed):
            if proc.poll() is None:
                proc.kill()


# -- workers on the embedded store ---------------------------------------------------------
class _Worker:
    def __init__(self, env: dict[str, str], redis_url: str, queue: str, log: Path, *extra: str):
        self.log = open(log, "w")
        self.path = log
        self.proc = subprocess.Popen([GNOMON, "worker", "--redis", redis_url, "--queue", queue, *extra], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()


def _submit(env, redis_url: str, queue: str, *params: str) -> str:
    out = subprocess.run([GNOMON, "submit", "remote_demo", "--queue", queue, "--redis", redis_url, "--json",
                          *[a for p in params for a in ("-P", p)]], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    return json.loads(out.stdout)["id"]


@pytest.mark.servers
def test_cancel_and_worker_death_on_the_embedded_store(tmp_path, site, redis_server):
    """``gnomon jobs cancel`` -> KILLED; a SIGKILLed worker -> FAILED once another worker cleans up."""
    home = tmp_path / "home"
    store, env = Store(home), _env(home, site)
    queue = f"ends-{uuid.uuid4().hex[:6]}"
    fast = ("--heartbeat", "1", "--abandoned-after", "2", "--maintenance-interval", "1")
    worker = _Worker(env, redis_server.url, queue, tmp_path / "w1.log", *fast)
    second = None
    try:
        job = _submit(env, redis_server.url, queue, "sleep_s=60")
        run_id = store.wait_for("RUNNING")[0][0]
        cancel = subprocess.run([GNOMON, "jobs", "cancel", job, "--redis", redis_server.url], env=env,
                                capture_output=True, text=True, timeout=120)
        assert cancel.returncode == 0, cancel.stderr
        deadline = time.monotonic() + 60
        while store.status(run_id)[0] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        status, tags = store.status(run_id)
        assert status == "KILLED" and "cancel" in tags.get("gnomon.error", ""), (status, tags)

        _submit(env, redis_server.url, queue, "sleep_s=60")
        dying = store.wait_for("RUNNING")[0][0]
        worker.stop()  # SIGKILL the worker and its work horse together
        assert store.status(dying)[0] == "RUNNING"
        second = _Worker(env, redis_server.url, queue, tmp_path / "w2.log", *fast)
        deadline = time.monotonic() + 240
        while store.status(dying)[0] == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        status, tags = store.status(dying)
        assert status == "FAILED", (status, tags, second.path.read_text()[-3000:])
    finally:
        worker.stop()
        if second is not None:
            second.stop()
