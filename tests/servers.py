"""Real servers for the remote tests: SeaweedFS (S3), Redis and ``mlflow server``.

Each binds to 127.0.0.1 on free ports, keeps its data in a temporary folder, and is started
once per test session (shared by every test module that asks for it) and stopped at the end.
A missing binary skips the tests locally but fails loudly when ``CI`` is true.

Use the fixtures ``s3_server``, ``redis_server`` and ``mlflow_server`` (import them into a
test module), or the classes directly (the benchmarks do).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent
ACCESS_KEY = "gnomon-test-access"
SECRET_KEY = "gnomon-test-secret-0123456789"
BUCKET = "gnomon-test"


def ctrl_c_enabled() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT: a shell that starts the test run in the
    background (``cmd &``) makes SIGINT ignored, and children inherit that, so Ctrl-C would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together while choosing, so no duplicates)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def find_binary(name: str) -> str:
    """The path of ``name`` (venv first); skip locally or fail under CI when it is missing."""
    path = VENV_BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found:
        return found
    message = f"'{name}' is not installed (needed for the remote tests)"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message + "; CI must install it (see .ci/run)", pytrace=False)
    pytest.skip(message)


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


class _Server:
    proc: subprocess.Popen | None = None
    log: Path

    def _spawn(self, argv: list[str], env: dict | None = None, cwd: Path | None = None) -> None:
        self.log_handle = open(self.log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log_handle, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)

    def stop(self) -> None:
        """Stop the server (its whole process group) and remove its data."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if getattr(self, "log_handle", None):
            self.log_handle.close()
        shutil.rmtree(self.root, ignore_errors=True)


class SeaweedS3(_Server):
    """``weed mini`` with only S3 (plus its master, volume and filer) on free 127.0.0.1 ports."""

    def __init__(self, bucket: str = BUCKET):
        self.root = Path(tempfile.mkdtemp(prefix="gnomon-seaweed-"))
        self.log = self.root / "weed.log"
        self.bucket = bucket
        self.access_key, self.secret_key = ACCESS_KEY, SECRET_KEY

    def start(self) -> SeaweedS3:
        weed = find_binary("weed")
        config = self.root / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "gnomon", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        (self.root / "data").mkdir()
        # The admin server's embedded worker dials admin.port + 10000: keep that pair free and consistent.
        while True:
            ports = free_ports(9)
            admin = ports[8]
            if admin + 10000 < 65535 and _port_free(admin + 10000) and admin + 10000 not in ports:
                break
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports[:8]
        self.port = s3
        self._spawn([
            weed, "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-filer.localSocket={self.root / 'filer.sock'}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.config={config}", f"-s3.localSocket={self.root / 's3.sock'}",
            "-webdav=false", "-admin.ui=false", f"-admin.port={admin}", f"-admin.port.grpc={admin + 10000}",
        ], cwd=self.root)
        _wait(self._ready, "SeaweedFS", self.proc, self.log)
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables giving a boto3 client (or awscli, or mlflow) access to this store."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                "MLFLOW_S3_ENDPOINT_URL": self.endpoint, "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, secret: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=secret or self.secret_key, region_name="us-east-1")

    def _ready(self) -> bool:
        client = self.client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception:
            client.create_bucket(Bucket=self.bucket)
        client.put_object(Bucket=self.bucket, Key=".ready", Body=b"1")
        return True


class RedisServer(_Server):
    """A real ``redis-server`` without persistence on a free 127.0.0.1 port."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="gnomon-redis-"))
        self.log = self.root / "redis.log"

    def start(self) -> RedisServer:
        binary = find_binary("redis-server")
        self.port = free_ports(1)[0]
        self._spawn([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(self.root), "--protected-mode", "yes"], cwd=self.root)
        _wait(self._ready, "redis-server", self.proc, self.log, timeout=20)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ready(self) -> bool:
        import redis

        return redis.Redis.from_url(self.url).ping()


class MlflowServer(_Server):
    """``mlflow server`` with a SQLite backend and artifacts proxied to the S3 store."""

    def __init__(self, s3: SeaweedS3, prefix: str = "mlflow-artifacts"):
        self.root = Path(tempfile.mkdtemp(prefix="gnomon-mlflow-"))
        self.log = self.root / "mlflow.log"
        self.s3, self.prefix = s3, prefix

    def start(self) -> MlflowServer:
        binary = find_binary("mlflow")
        self.port = free_ports(1)[0]
        env = {**os.environ, **self.s3.env()}
        env.pop("MLFLOW_TRACKING_URI", None)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # four huey job-runner processes gnomon never uses
        self._spawn([binary, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                     "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                     "--artifacts-destination", f"s3://{self.s3.bucket}/{self.prefix}"], env=env, cwd=self.root)
        _wait(self._ready, "mlflow server", self.proc, self.log, timeout=300)  # its imports crawl on a loaded machine
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
            return response.status == 200


_running: dict[str, _Server] = {}


def _shared(request, name: str, make):
    server = _running.get(name)
    if server is None or server.proc is None or server.proc.poll() is not None:
        server = make()
        try:
            server.start()
        except BaseException:  # a server that never became ready must not outlive the session
            server.stop()
            raise
        _running[name] = server
        request.config.add_cleanup(server.stop)
    return server


@pytest.fixture(scope="session")
def s3_server(request) -> SeaweedS3:
    """A running SeaweedFS S3 store with the bucket ``gnomon-test`` (one per test session)."""
    return _shared(request, "s3", SeaweedS3)


@pytest.fixture(scope="session")
def redis_server(request) -> RedisServer:
    """A running Redis server (one per test session)."""
    return _shared(request, "redis", RedisServer)


@pytest.fixture(scope="session")
def mlflow_server(request, s3_server) -> MlflowServer:
    """A running ``mlflow server`` whose artifacts go to the S3 store (one per test session)."""
    return _shared(request, "mlflow", lambda: MlflowServer(s3_server))


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> SeaweedS3:
    """The S3 store's credentials and endpoint in this test's environment."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    return s3_server


# -- a small plugin distribution for the remote tests --------------------------------------
DEMO_PLUGIN = '''"""A tiny gnomon plugin used by the remote tests (not installed anywhere)."""
from marshmallow import fields, validate

from gnomon.core.fields import Bool
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task

GNOMON_HOOK_API = "1"
MARKER = "{marker}"


class DemoSchema(TaskSchema):
    n = fields.Integer(load_default=10, validate=validate.Range(min=1, max=1000),
                       metadata={{"description": "how many numbers to draw"}})
    sleep_s = fields.Float(load_default=0.0, validate=validate.Range(min=0, max=60),
                           metadata={{"description": "seconds to sleep (to test killed workers)"}})
    fail = Bool(load_default=False, metadata={{"description": "raise an error instead of finishing"}})
    offset = fields.Integer(load_default=0, metadata={{"description": "added to the total (e.g. an earlier step's)"}})
    input_run = fields.String(load_default="", metadata={{
        "description": "run id whose demo/draws.json artifact is read (downloaded through MLflow) and added"}})


def remote_demo(ctx, n, sleep_s, fail, seed, offset, input_run):
    import json
    import time

    ctx.output("marker", MARKER)
    ctx.set_tag("demo.started", MARKER)  # outputs are written when the run ends; this tag says the task began
    if sleep_s:
        time.sleep(sleep_s)
    if fail:
        raise ValueError("remote_demo failed on purpose (fail=true)")
    inherited = 0
    if input_run:
        import mlflow

        path = mlflow.artifacts.download_artifacts(run_id=input_run, artifact_path="demo/draws.json",
                                                   dst_path=str(ctx.workdir / "input"))
        inherited = sum(json.loads(open(path).read())["draws"])
    draws = ctx.rng.integers(0, 100, size=n)
    ctx.log_metrics({{"n": n, "mean": float(draws.mean()), "inherited": inherited}})
    ctx.log_json({{"draws": draws.tolist(), "marker": MARKER}}, "demo/draws.json")
    return {{"total": int(draws.sum()) + offset + inherited}}


@hookimpl
def register_workflows(register):
    import os

    register("remote_demo_flow", os.path.join(os.path.dirname(__file__), "demo_flow.toml"))


@hookimpl
def register_tasks(register):
    register(Task(name="remote_demo", summary="Draw seeded numbers (remote tests).", schema=DemoSchema,
                  fn=remote_demo, category="utility"))
'''


DEMO_FLOW = '''[workflow]
name = "remote_demo_flow"
description = "Two remote_demo steps (remote workflow tests)."

[vars]
n = 5
seed = 0

[steps.first]
task = "remote_demo"
[steps.first.params]
n = "${vars.n}"
seed = "${vars.seed}"

[steps.second]
task = "remote_demo"
[steps.second.params]
n = 3
seed = "${vars.seed}"
'''


def write_demo_plugin(root: Path, marker: str = "v1", version: str = "0.1.0") -> Path:
    """A plugin distribution ``gnomon_remote_demo`` under ``root`` (put ``root`` on PYTHONPATH to "install" it).

    It has a real ``.dist-info`` with an entry point in the ``gnomon`` group, so gnomon finds it
    exactly like a pip-installed plugin when ``root`` is on ``sys.path``.
    """
    pkg = root / "gnomon_remote_demo"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Demo plugin package."""\n')
    (pkg / "plugin.py").write_text(DEMO_PLUGIN.format(marker=marker))
    (pkg / "demo_flow.toml").write_text(DEMO_FLOW)
    (pkg / "__pycache__").mkdir(exist_ok=True)
    (pkg / "__pycache__" / "junk.pyc").write_bytes(b"not part of a bundle")
    info = root / f"gnomon_remote_demo-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: gnomon-remote-demo\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[gnomon]\nremote_demo = gnomon_remote_demo.plugin\n")
    (info / "top_level.txt").write_text("gnomon_remote_demo\n")
    return root
