"""Benchmark plugin sync/pull and job start latency against a real SeaweedFS and Redis.

Run: ``.venv/bin/python benchmarks/bench_sync.py [--repeat 3]``

Measured in the same run, on the same SeaweedFS:

- first sync: ``gnomon plugins sync`` (CLI, fresh prefix) against ``aws s3 sync`` (awscli, fresh
  prefix) of the same files, i.e. every file the plugins' bundles contain, laid out the same way
  (target: ratio <= 1.0). For transparency, ``aws s3 sync`` of the finished bundle files is shown too;
- no-op re-sync and no-op pull through the Python API (target: <= 0.5 s each), and the same
  through the CLI including Python start-up (for information);
- submit-to-start latency on an idle ``gnomon worker`` (job enqueued -> job function running),
  after a warm-up job so the plugin pull is not counted (target: <= 1 s).
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


CPU: dict[str, list[float]] = {}


def run(argv: list[str], env: dict, label: str | None = None) -> float:
    """Wall seconds of a command; its CPU seconds (user + system) are recorded under ``label``."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, done = timed(subprocess.run, argv, env=env, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    if label:
        CPU.setdefault(label, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return seconds


def stage_plugin_files(plugins, root: Path) -> tuple[int, int]:
    """Copy every file the bundles contain into ``root`` (same layout); returns (files, bytes)."""
    from gnomon.core.remote.bundle import plugin_members

    count = size = 0
    for info in plugins.loaded:
        files, generated = plugin_members(info)
        for arcname, path in files.items():
            target = root / arcname
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            count, size = count + 1, size + target.stat().st_size
        for arcname, data in generated.items():
            target = root / arcname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            count, size = count + 1, size + len(data)
    return count, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each timing (median reported)")
    parser.add_argument("--jobs", type=int, default=5, help="jobs for the submit-to-start latency")
    args = parser.parse_args()

    from servers import RedisServer, SeaweedS3

    s3, redis_server = SeaweedS3().start(), RedisServer().start()
    work = Path(tempfile.mkdtemp(prefix="gnomon-bench-sync-"))
    worker = None
    try:
        os.environ.update(s3.env())
        env = {k: v for k, v in os.environ.items() if not k.startswith("GNOMON_")}
        env.update({"HOME": str(work / "home"), "GNOMON_HOME": str(work / "home" / ".gnomon"), "COLUMNS": "200"})
        from gnomon.core.plugins import load_plugins
        from gnomon.core.remote.bundle import build_bundle
        from gnomon.core.remote.pull import pull
        from gnomon.core.remote.sync import sync_plugins

        plugins = load_plugins(environ={})
        names = [i.name for i in plugins.loaded]
        files, nbytes = stage_plugin_files(plugins, work / "files")
        bundles_dir = work / "bundles"
        bundles_dir.mkdir()
        for info in plugins.loaded:
            bundle = build_bundle(info)
            (bundles_dir / f"{bundle.name}-{bundle.sha256}.tar.gz").write_bytes(bundle.data)
        print(f"plugins: {', '.join(names)} ({files} files, {nbytes:,} bytes)")
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

        aws = [str(BIN / "aws"), "s3", "sync", "--only-show-errors", "--endpoint-url", s3.endpoint]
        first_gnomon, first_aws, first_aws_bundles = [], [], []
        for _ in range(args.repeat):
            first_gnomon.append(run([str(BIN / "gnomon"), "plugins", "sync",
                                     f"s3://{s3.bucket}/g-{uuid.uuid4().hex[:8]}"], env, "gnomon"))
            first_aws.append(run(aws + [str(work / "files"), f"s3://{s3.bucket}/a-{uuid.uuid4().hex[:8]}/"], env, "aws"))
            first_aws_bundles.append(run(aws + [str(bundles_dir), f"s3://{s3.bucket}/b-{uuid.uuid4().hex[:8]}/"], env))
        g, a, b = map(statistics.median, (first_gnomon, first_aws, first_aws_bundles))
        print(f"first sync   gnomon plugins sync {g:6.3f} s | aws s3 sync of the same files {a:6.3f} s "
              f"-> ratio {g / a:.2f} (target <= 1.0) {'PASS' if g / a <= 1.0 else 'FAIL'}")
        cg, ca = statistics.median(CPU["gnomon"]), statistics.median(CPU["aws"])
        print(f"             CPU time (user+sys): gnomon {cg:.3f} s | aws {ca:.3f} s -> ratio {cg / ca:.2f}")
        print(f"             (aws s3 sync of the {len(names)} finished bundle files: {b:.3f} s, ratio {g / b:.2f})")

        url = f"s3://{s3.bucket}/bench-{uuid.uuid4().hex[:8]}"
        sync_plugins(plugins, url)
        noop_sync = statistics.median(timed(sync_plugins, plugins, url)[0] for _ in range(args.repeat))
        cache = work / "cache"
        pull(url, cache)
        noop_pull = statistics.median(timed(pull, url, cache)[0] for _ in range(args.repeat))
        cli_sync = statistics.median(run([str(BIN / "gnomon"), "plugins", "sync", url], env) for _ in range(args.repeat))
        cli_pull = statistics.median(run([str(BIN / "gnomon"), "plugins", "pull", url, "--cache", str(cache)], env)
                                     for _ in range(args.repeat))
        print(f"no-op sync   {noop_sync:6.3f} s (API, target <= 0.5) {'PASS' if noop_sync <= 0.5 else 'FAIL'}"
              f" | CLI incl. start-up {cli_sync:.3f} s")
        print(f"no-op pull   {noop_pull:6.3f} s (API, target <= 0.5) {'PASS' if noop_pull <= 0.5 else 'FAIL'}"
              f" | CLI incl. start-up {cli_pull:.3f} s")

        # submit-to-start latency on an idle worker
        from PIL import Image

        from gnomon.core.remote import jobs

        data = work / "tiny"
        for label in ("0", "1"):
            (data / label).mkdir(parents=True)
            Image.new("L", (4, 4), color=int(label) * 200).save(data / label / "a.png")
        log = open(work / "worker.log", "w")
        worker = subprocess.Popen([str(BIN / "gnomon"), "worker", "--redis", redis_server.url, "--queue", "bench",
                                   "--plugins", url, "--cache", str(work / "worker-cache")],
                                  env={**env, "HOME": str(work / "whome"), "GNOMON_HOME": str(work / "whome" / ".g")},
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        connection = jobs.connect(redis_server.url)
        manifest = pull(url, cache).manifest_id

        def one() -> tuple[float, float]:
            job = jobs.submit(connection, "dataset_summary", {"data_dir": str(data)}, queue_name="bench",
                              manifest_id=manifest)
            info = jobs.wait(connection, job.id, timeout=300, poll=0.05)
            if info["status"] != "finished":
                raise SystemExit(f"benchmark job failed: {info['error']}\n{(work / 'worker.log').read_text()[-3000:]}")
            meta = jobs.fetch(connection, job.id).meta
            return meta["function_started_at"] - meta["submitted_at"], meta.get("pull_s", 0.0)

        one()  # warm-up: the worker pulls and caches the plugins, MLflow creates its store
        samples = [one() for _ in range(args.jobs)]
        latency = statistics.median(s for s, _ in samples)
        pulls = statistics.median(p for _, p in samples)
        print(f"submit->start {latency:6.3f} s median of {args.jobs} (max {max(s for s, _ in samples):.3f}; "
              f"target <= 1.0) {'PASS' if latency <= 1.0 else 'FAIL'} | pinned pull in the job {pulls:.3f} s (not counted)")
        print(f"load average at end: {os.getloadavg()[0]:.1f}")
    finally:
        if worker is not None:
            import signal

            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        redis_server.stop()
        s3.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
