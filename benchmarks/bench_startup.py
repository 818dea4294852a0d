"""Start-up benchmark: median wall time of light commands over several runs, vs `mlflow --help`.

Run: python benchmarks/bench_startup.py [--runs N]
Target: `gnomon --help` median <= 0.3 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], runs: int, env: dict, cpu: list[float] | None = None) -> list[float]:
    """Wall times of ``runs`` runs of ``cmd``; their CPU times (user + system) go to ``cpu``."""
    out = []
    subprocess.run(cmd, capture_output=True, env=env)  # warm the file cache
    for _ in range(runs):
        cpu_before = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, env=env)
        out.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(_children_cpu() - cpu_before)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-500:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="gnomon-bench-home-")
    env = {**os.environ, "GNOMON_HOME": home}
    gnomon = str(BIN / "gnomon")
    commands = {
        "gnomon --help": [gnomon, "--help"],
        "gnomon tasks list": [gnomon, "tasks", "list"],
        "gnomon tasks show train": [gnomon, "tasks", "show", "train"],
        "gnomon plugins list": [gnomon, "plugins", "list"],
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
    }
    mlflow = shutil.which("mlflow", path=str(BIN)) or shutil.which("mlflow")
    if mlflow:
        commands["mlflow --help (reference)"] = [mlflow, "--help"]
    results, cpus = {}, {}
    for name, cmd in commands.items():
        runs = args.runs if "mlflow" not in name else max(3, args.runs // 3)
        try:
            cpus[name] = []
            results[name] = timed(cmd, runs, env, cpus[name])
        except SystemExit as exc:
            print(f"{name}: {exc}")
    # CPU time is what the command costs; wall time also counts waiting for a busy machine
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"{'command':32} {'median s':>9} {'min s':>7} {'max s':>7} {'CPU s':>7}  runs")
    for name, times in results.items():
        print(f"{name:32} {statistics.median(times):9.3f} {min(times):7.3f} {max(times):7.3f} "
              f"{statistics.median(cpus[name]):7.3f}  {len(times)}")
    help_median = statistics.median(results["gnomon --help"])
    print(f"\ntarget: gnomon --help median <= 0.300 s -> {help_median:.3f} s "
          f"({'OK' if help_median <= 0.3 else 'OVER BUDGET'})")
    if "mlflow --help (reference)" in results:
        ref = statistics.median(results["mlflow --help (reference)"])
        print(f"ratio gnomon --help / mlflow --help = {help_median / ref:.3f}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
