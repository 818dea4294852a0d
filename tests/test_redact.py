# ruff: noqa: F811  (pytest fixtures imported from servers.py are redefined as test arguments)
"""Credentials never printed: the one masking helper, and every place gnomon shows a URI or an error.

Real processes against a real ``mlflow server`` (password in MLFLOW_TRACKING_URI), a real
password-protected ``redis-server`` (worker start-up line), a closed port and a server that drops
every connection (unreachable tracking server: one line, within seconds, not minutes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from servers import find_binary, free_ports, mlflow_server, s3_server  # noqa: E402,F401

from gnomon.core.redact import redact, secret_values  # noqa: E402

GNOMON = str(Path(sys.executable).parent / "gnomon")
PASSWORD = "Pa55-w0rd-xyzzy"


@pytest.mark.parametrize("text, expected", [
    ("http://alice:secretpw@host:5000/x", "http://alice:***@host:5000/x"),
    ("redis://:redispw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("see https://ghp_TOKEN123@github.com/a/b.git now", "see https://***@github.com/a/b.git now"),
    ("postgresql://u:p%40ss@db/mlflow", "postgresql://u:***@db/mlflow"),
    ("s3://bucket/prefix and http://host:80/ok", "s3://bucket/prefix and http://host:80/ok"),
    ("https://s3/x?X-Amz-Signature=abcdef&a=1", "https://s3/x?X-Amz-Signature=***&a=1"),
    ("mailto-like a@b but no scheme", "mailto-like a@b but no scheme"),
])
def test_redact_uris(text, expected):
    assert redact(text, environ={}) == expected


def test_redact_secret_values_from_the_environment():
    environ = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG", "MLFLOW_TRACKING_PASSWORD": "hunter22",
               "GNOMON_REDIS_URL": "redis://:r3dispass@host/0", "HOME": "/root"}
    text = "key wJalrXUtnFEMI/K7MDENG pw hunter22 redis r3dispass home /root"
    assert redact(text, environ=environ) == "key *** pw *** redis *** home /root"
    assert "/root" not in secret_values(environ)


def test_failed_task_tag_and_error_file_are_masked(gnomon_engine_factory, monkeypatch):
    from marshmallow import fields

    from gnomon.core.errors import TaskFailedError
    from gnomon.core.hookspecs import hookimpl
    from gnomon.core.schemas import TaskSchema
    from gnomon.core.tasks import Task

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "AKIAsecretvalue99")

    class _Schema(TaskSchema):
        x = fields.Integer(load_default=1)

    def _leak(ctx, x, seed):
        raise ValueError(f"cannot open http://bob:{PASSWORD}@store:9000/a with key AKIAsecretvalue99")

    class _Plugin:
        @hookimpl
        def register_tasks(self, register):
            register(Task(name="leak", summary="leaks", schema=_Schema, fn=_leak))

    engine = gnomon_engine_factory(plugins=[_Plugin()])
    with pytest.raises(TaskFailedError) as info:
        engine.run("leak", {})
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=engine.tracking_uri)
    run = client.get_run(info.value.run_id)
    tag = run.data.tags["gnomon.error"]
    assert "bob:***@" in tag and PASSWORD not in tag and "AKIAsecretvalue99" not in tag
    local = client.download_artifacts(info.value.run_id, "error.txt")
    text = Path(local).read_text()
    assert "Traceback" in text and PASSWORD not in text and "AKIAsecretvalue99" not in text


def _env(home: Path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GNOMON_", "MLFLOW_", "AWS_"))}
    env.update({"GNOMON_HOME": str(home), "COLUMNS": "200"})
    env.update(extra)
    return env


def _run(env, *args, timeout=600):
    started = time.monotonic()
    proc = subprocess.run([GNOMON, *args], env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.monotonic() - started


def test_unreachable_tracking_server_is_one_masked_line(tmp_path, gnomon_image_folder):
    port = free_ports(1)[0]  # nothing listens there
    env = _env(tmp_path / "home", MLFLOW_TRACKING_URI=f"http://alice:{PASSWORD}@127.0.0.1:{port}")
    for debug in ((), ("--debug",)):
        proc, _ = _run(env, *debug, "run", "dataset_summary", "-P", f"data_dir={gnomon_image_folder()}")
        assert proc.returncode == 1
        assert PASSWORD not in proc.stdout + proc.stderr
        assert f"cannot reach the tracking server http://alice:***@127.0.0.1:{port}" in proc.stderr
        if not debug:
            assert [line for line in proc.stderr.splitlines() if line.strip()] == [proc.stderr.strip()]


class _Dropper:
    """A TCP server that accepts every connection and closes it at once (a dead backend behind a port)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_tracking_server_dropping_connections_fails_fast_with_one_line(tmp_path, gnomon_image_folder):
    """MLflow's own retries (about 4 minutes by default) are bounded by gnomon to about 10 s."""
    server = _Dropper()
    env = _env(tmp_path / "home", MLFLOW_TRACKING_URI=f"http://alice:{PASSWORD}@127.0.0.1:{server.port}")
    folder = gnomon_image_folder()
    baseline, base_s = _run(env, "tasks", "list")  # the same start-up, no tracking server involved
    assert baseline.returncode == 0
    proc, took = _run(env, "run", "dataset_summary", "-P", f"data_dir={folder}")
    server.sock.close()
    assert proc.returncode == 1
    assert server.accepted >= 2  # MLflow did retry
    assert PASSWORD not in proc.stdout + proc.stderr
    assert "cannot reach the tracking server http://alice:***@" in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [proc.stderr.strip()]
    assert took - base_s < 60, (took, base_s)  # 3 retries with backoff 1, 2, 4 s; MLflow's defaults take ~250 s


@pytest.mark.servers
def test_password_in_tracking_uri_masked_in_trailer_and_tags(tmp_path, gnomon_image_folder, mlflow_server):
    uri = mlflow_server.url.replace("http://", f"http://alice:{PASSWORD}@")
    env = _env(tmp_path / "home", MLFLOW_TRACKING_URI=uri)
    proc, _ = _run(env, "run", "dataset_summary", "-P", f"data_dir={gnomon_image_folder()}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"tracking: http://alice:***@127.0.0.1:{mlflow_server.port}" in proc.stdout
    assert PASSWORD not in proc.stdout + proc.stderr
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`gnomon.task` = 'dataset_summary'")
    assert runs
    for run in runs:
        assert all(PASSWORD not in v for v in list(run.data.tags.values()) + list(run.data.params.values()))


@pytest.mark.servers
def test_worker_start_line_and_endpoint_echo_are_masked(tmp_path):
    binary = find_binary("redis-server")
    port = free_ports(1)[0]
    redis_pw = "r3dis-Secret-pw"
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--requirepass", redis_pw], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              cwd=tmp_path)
    try:
        import redis

        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=port, password=redis_pw).ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        env = _env(tmp_path / "home", MLFLOW_TRACKING_URI=f"http://bob:{PASSWORD}@127.0.0.1:9",
                   AWS_SECRET_ACCESS_KEY="aws-Secret-Key-777", AWS_ACCESS_KEY_ID="AKIDEXAMPLE")
        proc, _ = _run(env, "worker", "--burst", "--redis", f"redis://:{redis_pw}@127.0.0.1:{port}/0", timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-2000:]
        assert f"redis redis://:***@127.0.0.1:{port}/0" in out and "tracking http://bob:***@127.0.0.1:9" in out
        assert redis_pw not in out and PASSWORD not in out
        wrong, _ = _run(env, "jobs", "list", "--redis", f"redis://:not-{redis_pw}@127.0.0.1:{port}/0")
        assert wrong.returncode == 1 and redis_pw not in wrong.stdout + wrong.stderr
        closed = free_ports(1)[0]
        pulled, _ = _run(env, "plugins", "pull", "s3://bucket/prefix", "--endpoint-url",
                         f"http://key:{PASSWORD}@127.0.0.1:{closed}", "--cache", str(tmp_path / "cache"))
        out = pulled.stdout + pulled.stderr
        assert pulled.returncode != 0
        assert PASSWORD not in out and "aws-Secret-Key-777" not in out and "Traceback" not in out
        assert f"key:***@127.0.0.1:{closed}" in out
    finally:
        server.terminate()
        server.wait(timeout=20)
