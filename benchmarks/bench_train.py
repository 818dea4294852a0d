"""Benchmark: ``gnomon run train`` (le_net, full MNIST) against a plain Keras script, in the same run.

Runs ``benchmarks/plain_keras_train.py`` and ``gnomon run train`` one after the other as
separate processes (same model, data, batch size, optimiser, metrics and validation fraction),
then prints the per-epoch wall times (training + validation), their ratio (gnomon / plain;
the target is <= 1.10), the same for process CPU time (which other load on a shared machine
disturbs much less) and the test accuracy of both (target for le_net: >= 0.990 in 5
epochs). The first epoch includes graph tracing, so the ratio is also given without it.

    nice -n 10 .venv/bin/python benchmarks/bench_train.py [--epochs 5] [--batch-size 64]

MNIST comes from ``--mnist`` (default ../shared/data/mnist); gnomon prepares its PNG folders
under ``--home`` once (later runs reuse them and the loader's cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def run_plain(args) -> dict:
    cmd = [sys.executable, str(HERE / "plain_keras_train.py"), "--mnist", args.mnist, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--validation-split", str(args.validation_split),
           "--seed", str(args.seed)]
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def run_gnomon(args, env) -> dict:
    gnomon = str(Path(sys.executable).with_name("gnomon"))
    cmd = [gnomon, "run", "train", "--json", "-P", "model_architecture=le_net", "-P", f"epochs={args.epochs}",
           "-P", f"batch_size={args.batch_size}", "-P", f"validation_split={args.validation_split}",
           "-P", f"seed={args.seed}", "-P", "register_model=true"]
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    result = json.loads(out.stdout)
    result["process_s"] = time.perf_counter() - started
    os.environ.update({k: env[k] for k in ("GNOMON_HOME",)})
    from gnomon.core.engine import Engine

    client = Engine(show_progress=False).mlflow_client()
    history = sorted(client.get_metric_history(result["run_id"], "epoch_time_s"), key=lambda m: m.step)
    result["epoch_times_s"] = [m.value for m in history]
    cpu = sorted(client.get_metric_history(result["run_id"], "epoch_cpu_time_s"), key=lambda m: m.step)
    result["epoch_cpu_times_s"] = [m.value for m in cpu]
    return result


def summary(times: list[float]) -> tuple[float, float]:
    rest = times[1:] or times
    return statistics.mean(times), statistics.median(rest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--home", default="/tmp/gnomon-bench-train")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = dict(os.environ, GNOMON_HOME=args.home, GNOMON_MNIST_SOURCE=args.mnist, TF_CPP_MIN_LOG_LEVEL="3",
               GNOMON_EXPERIMENT="bench_train")
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"le_net, full MNIST, {args.epochs} epochs, batch {args.batch_size}, validation {args.validation_split}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    # prepare the PNG folders (and the loader cache) first, so neither timed run pays for them
    subprocess.run([str(Path(sys.executable).with_name("gnomon")), "data", "mnist"], check=True, env=env,
                   capture_output=True)
    plain = run_plain(args)
    print(f"plain Keras : epochs {', '.join(f'{t:.1f}' for t in plain['epoch_times_s'])} s; "
          f"test accuracy {plain['test']['accuracy']:.4f}", flush=True)
    ours = run_gnomon(args, env)
    print(f"gnomon train: epochs {', '.join(f'{t:.1f}' for t in ours['epoch_times_s'])} s; "
          f"test accuracy {ours['metrics']['accuracy']:.4f} (run {ours['run_id']})", flush=True)
    p_mean, p_med = summary(plain["epoch_times_s"])
    g_mean, g_med = summary(ours["epoch_times_s"])
    print(f"per-epoch wall time, mean of all epochs : gnomon {g_mean:.2f} s / plain {p_mean:.2f} s "
          f"= ratio {g_mean / p_mean:.3f} (target <= 1.10)")
    print(f"per-epoch wall time, median after epoch 1: gnomon {g_med:.2f} s / plain {p_med:.2f} s "
          f"= ratio {g_med / p_med:.3f}")
    if plain.get("epoch_cpu_times_s") and ours.get("epoch_cpu_times_s"):
        p_cpu, g_cpu = summary(plain["epoch_cpu_times_s"])[0], summary(ours["epoch_cpu_times_s"])[0]
        print(f"per-epoch process CPU time, mean        : gnomon {g_cpu:.2f} s / plain {p_cpu:.2f} s "
              f"= ratio {g_cpu / p_cpu:.3f} (insensitive to other load on the machine)")
    print(f"whole process: gnomon {ours['process_s']:.1f} s (incl. loading PNGs, MLflow logging, registering) / "
          f"plain {plain['process_s']:.1f} s")
    ok = ours["metrics"]["accuracy"] >= 0.99
    print(f"le_net test accuracy after {args.epochs} epochs: {ours['metrics']['accuracy']:.4f} "
          f"({'meets' if ok else 'misses'} the 0.990 target); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
