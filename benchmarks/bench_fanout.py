"""Benchmark the scheduling overhead of workflow steps fanned out over RQ workers.

Run: ``.venv/bin/python benchmarks/bench_fanout.py [--steps 200] [--workers 1,2,4] [--chain 30]``

Starts its own SeaweedFS (S3), Redis and ``mlflow server`` (SQLite backend, artifacts proxied to S3),
syncs the tests' demo plugin (its ``remote_demo`` task draws a few seeded numbers and logs one
metric set, two output tags and one small JSON artifact: no training), then measures, in the same run:

- **fan**: a workflow of ``--steps`` independent light steps on 1, 2 and 4 ``gnomon worker``
  processes (each with its own HOME and plugin cache): wall time from submission to the parent run
  closed, throughput (steps/s) and the per-step overhead with a free worker, *ready -> finished*:
  for each step, its job's end minus the later of the moment it was enqueued and the end of the
  previous job on the same worker (target: median <= 0.2 s);
- **chain**: ``--chain`` steps each using the previous one's output, on one worker: each step's
  submit-to-finish (enqueued by RQ when its dependency finished -> finished), which includes RQ's
  ``depends_on`` hand-over and the MLflow reads of the inputs;
- **reference**: the same fan of steps run by ``gnomon workflow run`` in one process (no queue)
  against the same tracking server: seconds per step. The ratio fan/reference is the price of
  distribution per step;
- **cost per step**: MLflow server requests (counted in its access log), Redis commands (``INFO
  commandstats``), and CPU seconds of each component (mlflow server, Redis, workers and their work
  horses, from /proc), which is what bounds throughput on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
BIN = Path(sys.executable).parent
REQUEST_RE = re.compile(rb'"(GET|POST|PUT|PATCH|DELETE) ')
ENDPOINT_RE = re.compile(rb'"(GET|POST|PUT|PATCH|DELETE) ([^ ?"]*)')
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its reaped children (work horses), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and every living descendant (with their reaped children)."""
    from test_remote_jobs import _descendants

    return sum(cpu_seconds(p) for p in [pid, *_descendants(pid)])


def redis_calls(url: str) -> int:
    import redis

    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


def mlflow_requests(log: Path) -> int:
    return len(REQUEST_RE.findall(log.read_bytes()))


def mlflow_endpoints(log: Path, skip: int, steps: int) -> dict[str, float]:
    """Requests per step by endpoint, over the access-log requests after the first ``skip``."""
    counts: dict[str, int] = {}
    for method, path in ENDPOINT_RE.findall(log.read_bytes())[skip:]:
        path = path.decode()
        kind = path.split("/")[4] if path.startswith("/api/2.0/mlflow-artifacts/") else None
        name = f"{method.decode()} " + (f"artifacts ({kind})" if kind else path.removeprefix("/api/2.0/mlflow"))
        counts[name] = counts.get(name, 0) + 1
    return {k: v / steps for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def fan_flow(n: int) -> str:
    lines = ['[workflow]\nname = "fan"\ndescription = "independent light steps"\n']
    for i in range(n):
        lines.append(f'[steps.s{i:04d}]\ntask = "remote_demo"\nparams = {{ n = 3, seed = {i} }}\n')
    return "\n".join(lines)


def chain_flow(n: int) -> str:
    lines = ['[workflow]\nname = "chain"\ndescription = "each step uses the previous one"\n',
             '[steps.c0000]\ntask = "remote_demo"\nparams = { n = 3, seed = 0 }\n']
    for i in range(1, n):
        lines.append(f'[steps.c{i:04d}]\ntask = "remote_demo"\n'
                     f'params = {{ n = 3, seed = {i}, offset = "${{steps.c{i - 1:04d}.outputs.total}}" }}\n')
    return "\n".join(lines)


class Stack:
    """S3, Redis, MLflow server, the synced demo plugin and helpers to start workers and submit."""

    def __init__(self, root: Path):
        from servers import MlflowServer, RedisServer, SeaweedS3, write_demo_plugin

        self.root = root
        self.s3 = SeaweedS3().start()
        self.redis = RedisServer().start()
        self.mlflow = MlflowServer(self.s3).start()
        self.site = write_demo_plugin(root / "site")
        self.url = f"s3://{self.s3.bucket}/bench-{uuid.uuid4().hex[:6]}"
        self.env = self.make_env(root / "submitter", PYTHONPATH=str(self.site), GNOMON_REDIS_URL=self.redis.url,
                                 MLFLOW_TRACKING_URI=self.mlflow.url, GNOMON_PLUGINS_URL=self.url)
        self.cli(["plugins", "sync", self.url])
        self.workers: list = []

    def make_env(self, home: Path, **extra) -> dict:
        from test_remote_jobs import _env

        return _env(self.s3, home, **extra)

    def cli(self, args: list[str], env: dict | None = None) -> str:
        done = subprocess.run([str(BIN / "gnomon"), *args], env=env or self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"gnomon {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start_workers(self, queue: str, count: int) -> list:
        from test_remote_jobs import Worker

        started = []
        for i in range(count):
            env = self.make_env(self.root / f"{queue}-w{i}", MLFLOW_TRACKING_URI=self.mlflow.url)
            started.append(Worker(self.root / f"{queue}-w{i}", env, self.redis.url, queue, self.url,
                                  "--name", f"{queue}-w{i}"))
        for w in started:
            w.wait_ready()
        self.workers += started
        return started

    def submit(self, text: str, queue: str) -> tuple[str, float]:
        path = self.root / f"{uuid.uuid4().hex[:8]}.toml"
        path.write_text(text)
        began = time.perf_counter()
        out = json.loads(self.cli(["workflow", "run", str(path), "--queue", queue, "--json"]))
        return out["run_id"], time.perf_counter() - began

    def wait(self, run_id: str, timeout: float = 3600) -> dict:
        from gnomon.core.remote.fanout import wait_workflow
        from gnomon.core.remote.jobs import connect

        return wait_workflow(connect(self.redis.url), run_id, timeout=timeout, poll=0.1)

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
        for server in (self.mlflow, self.redis, self.s3):
            server.stop()


def job_times(redis_url: str, info: dict) -> list[dict]:
    from rq.job import Job

    from gnomon.core.remote.jobs import connect, serializer

    connection = connect(redis_url)
    jobs = Job.fetch_many([s["job"] for s in info["steps"]], connection=connection, serializer=serializer())
    return [{"worker": j.worker_name, "enqueued": j.enqueued_at.timestamp(), "started": j.started_at.timestamp(),
             "ended": j.ended_at.timestamp()} for j in jobs]


def ready_to_finished(times: list[dict]) -> list[float]:
    """Per step: end minus max(enqueued, previous end on the same worker)."""
    out = []
    by_worker: dict[str, list[dict]] = {}
    for t in times:
        by_worker.setdefault(t["worker"], []).append(t)
    for items in by_worker.values():
        items.sort(key=lambda t: t["ended"])
        previous = None
        for t in items:
            out.append(t["ended"] - max(t["enqueued"], previous if previous is not None else t["enqueued"]))
            previous = t["ended"]
    return out


def measure_fan(stack: Stack, steps: int, workers: int) -> dict:
    queue = f"bench-{workers}-{uuid.uuid4().hex[:4]}"
    started = stack.start_workers(queue, workers)
    # warm-up: every worker runs a first job (experiment lookup, first connection) before timing
    warm, _ = stack.submit(fan_flow(workers * 2), queue)
    stack.wait(warm)
    cpu_before = {"mlflow": tree_cpu(stack.mlflow.proc.pid), "redis": cpu_seconds(stack.redis.proc.pid),
                  "workers": sum(tree_cpu(w.proc.pid) for w in started)}
    requests_before, calls_before = mlflow_requests(stack.mlflow.log), redis_calls(stack.redis.url)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    run_id, submit_s = stack.submit(fan_flow(steps), queue)
    info = stack.wait(run_id)
    wall = time.perf_counter() - began
    load = (load_before, os.getloadavg()[0])
    assert info["state"] == "finished", info
    cpu = {"mlflow": tree_cpu(stack.mlflow.proc.pid) - cpu_before["mlflow"],
           "redis": cpu_seconds(stack.redis.proc.pid) - cpu_before["redis"],
           "workers": sum(tree_cpu(w.proc.pid) for w in started) - cpu_before["workers"]}
    times = job_times(stack.redis.url, info)
    for w in started:
        w.stop()
    stack.workers = [w for w in stack.workers if w not in started]
    overhead = ready_to_finished(times)
    return {"workers": workers, "wall_s": wall, "submit_s": submit_s, "throughput": steps / wall, "load": load,
            "overhead_median_s": statistics.median(overhead),
            "overhead_p90_s": sorted(overhead)[int(0.9 * len(overhead))],
            "in_job_median_s": statistics.median(t["ended"] - t["started"] for t in times),
            "mlflow_requests_per_step": (mlflow_requests(stack.mlflow.log) - requests_before) / steps,
            "mlflow_endpoints_per_step": mlflow_endpoints(stack.mlflow.log, requests_before, steps),
            "redis_calls_per_step": (redis_calls(stack.redis.url) - calls_before) / steps,
            "cpu_per_step": {k: v / steps for k, v in cpu.items()}}


def measure_chain(stack: Stack, length: int) -> dict:
    queue = f"chain-{uuid.uuid4().hex[:4]}"
    stack.start_workers(queue, 1)
    warm, _ = stack.submit(fan_flow(2), queue)
    stack.wait(warm)
    load_before = os.getloadavg()[0]
    run_id, _ = stack.submit(chain_flow(length), queue)
    info = stack.wait(run_id)
    assert info["state"] == "finished", info
    load = (load_before, os.getloadavg()[0])
    times = job_times(stack.redis.url, info)
    latency = [t["ended"] - t["enqueued"] for t in times[1:]]  # the first one waited for the submission
    return {"steps": length, "load": load, "submit_to_finish_median_s": statistics.median(latency),
            "submit_to_finish_p90_s": sorted(latency)[int(0.9 * len(latency))]}


def measure_local(stack: Stack, steps: int) -> dict:
    path = stack.root / "local-fan.toml"
    path.write_text(fan_flow(steps))
    env = dict(stack.env)
    requests_before = mlflow_requests(stack.mlflow.log)
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    out = json.loads(stack.cli(["workflow", "run", str(path), "--no-report", "--json"], env))
    wall = time.perf_counter() - began
    return {"wall_s": wall, "per_step_s": out["duration_s"] / steps, "load": (load_before, os.getloadavg()[0]),
            "mlflow_requests_per_step": (mlflow_requests(stack.mlflow.log) - requests_before) / steps}


def _load(result: dict) -> str:
    """The 1-minute load average before and after a measurement (the machine is shared)."""
    return f" [load average {result['load'][0]:.1f} -> {result['load'][1]:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="light steps in the fan-out workflow")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    parser.add_argument("--chain", type=int, default=20, help="length of the dependency chain")
    parser.add_argument("--reference-steps", type=int, default=40, help="steps of the in-process reference run")
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    root = Path(tempfile.mkdtemp(prefix="gnomon-bench-fanout-"))
    stack = Stack(root)
    try:
        local = measure_local(stack, args.reference_steps)
        print(f"reference, in one process (gnomon workflow run, no queue): {args.reference_steps} steps in "
              f"{local['wall_s']:.1f} s wall, {local['per_step_s']:.3f} s per step, "
              f"{local['mlflow_requests_per_step']:.1f} MLflow requests per step{_load(local)}", flush=True)
        chain = measure_chain(stack, args.chain)
        print(f"chain of {chain['steps']} dependent steps, 1 worker: submit-to-finish median "
              f"{chain['submit_to_finish_median_s']:.3f} s, p90 {chain['submit_to_finish_p90_s']:.3f} s{_load(chain)}",
              flush=True)
        results = []
        for count in counts:
            r = measure_fan(stack, args.steps, count)
            results.append(r)
            cpu = r["cpu_per_step"]
            print(f"fan of {args.steps} steps on {count} worker(s): {r['wall_s']:.1f} s "
                  f"(submission {r['submit_s']:.1f} s), {r['throughput']:.2f} steps/s; per-step overhead "
                  f"ready->finished median {r['overhead_median_s']:.3f} s (p90 {r['overhead_p90_s']:.3f} s, "
                  f"inside the job {r['in_job_median_s']:.3f} s); per step: {r['mlflow_requests_per_step']:.1f} "
                  f"MLflow requests, {r['redis_calls_per_step']:.1f} Redis commands, CPU s: mlflow server "
                  f"{cpu['mlflow']:.3f}, redis {cpu['redis']:.4f}, workers {cpu['workers']:.3f}{_load(r)}", flush=True)
            print("  MLflow requests per step by endpoint: " + ", ".join(
                f"{k} {v:.2f}" for k, v in r["mlflow_endpoints_per_step"].items()), flush=True)
        base = results[0]
        print("\nsummary")
        print("  per-step overhead (median, ready->finished): "
              + ", ".join(f"{r['workers']} w {r['overhead_median_s']:.3f} s" for r in results)
              + f"  (target <= 0.2 s); chain submit-to-finish {chain['submit_to_finish_median_s']:.3f} s")
        print(f"  ratio to the in-process reference ({local['per_step_s']:.3f} s/step): "
              + ", ".join(f"{r['workers']} w {r['overhead_median_s'] / local['per_step_s']:.2f}" for r in results))
        print("  throughput vs workers: " + ", ".join(
            f"{r['workers']} w {r['throughput']:.2f}/s (x{r['throughput'] / base['throughput']:.2f})" for r in results))
        total_cpu = {r["workers"]: sum(r["cpu_per_step"].values()) for r in results}
        print("  CPU seconds per step, all components: " + ", ".join(f"{k} w {v:.3f}" for k, v in total_cpu.items())
              + f" -> at most {os.cpu_count() / max(total_cpu.values()):.1f} steps/s on {os.cpu_count()} cores")
        print(f"  load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
