"""Benchmark: ``gnomon workflow run baseline`` against a plain ART + Keras script and against separate processes.

Measured in the same run, each as a fresh process, with the same MNIST data, model, epochs and
defenses:

- **plain**: ``benchmarks/plain_baseline_demo.py`` (no gnomon, no MLflow, no dataset artifacts);
- **workflow**: ``gnomon workflow run baseline`` (one process, one parent run with 20 child runs,
  dataset artifacts, the HTML report);
- **separate**: the same 20 steps as 20 ``gnomon run TASK -P ...`` processes, the run ids and model
  names handed from step to step by this script (what a Dioptra notebook user did by hand).

Figures printed: wall time of each, ``workflow / plain`` (target <= 1.15) and
``separate / workflow`` (what one process saves). MNIST is prepared and its decoded cache warmed
before anything is timed.

Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_workflow.py --mnist /work/shared/data/mnist [--epochs 3]
    .venv/bin/python benchmarks/bench_workflow.py --sample        # smoke run on the shipped 1,000/300 sample
    ... --all-demos        # also run the adversarial_embedding and clean_label workflows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GNOMON = str(BIN / "gnomon")


def _run(cmd: list[str], env: dict[str, str], what: str) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}")
    return elapsed, proc.stdout


def _cli_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_separately(env: dict[str, str], experiment: str, variables: dict) -> tuple[float, list[float]]:
    """Every step of the baseline workflow as its own ``gnomon run`` process; returns (total, per step)."""
    sys.path.insert(0, str(REPO))
    from gnomon.core.workflows import find_workflow
    from gnomon.core.workflows.runner import StepOutcome, resolve_params

    class _Registry:  # find_workflow only needs the registered path
        workflows = {}

    from gnomon.plugins.builtin.workflows import workflow_path

    workflow = find_workflow(type("E", (), {"registry": _Registry})(), str(workflow_path("baseline")))
    done: dict[str, StepOutcome] = {}
    per_step = []
    started = time.perf_counter()
    for step in workflow.steps:
        params = resolve_params(step, variables, done)
        cmd = [GNOMON, "run", step.task, "--json", "--no-progress", "--experiment", experiment]
        for key, value in params.items():
            cmd += ["-P", f"{key}={_cli_value(value)}"]
        elapsed, out = _run(cmd, env, f"step {step.name}")
        per_step.append(elapsed)
        result = json.loads(out)
        done[step.name] = StepOutcome(name=step.name, task=step.task, status="ran", run_id=result["run_id"],
                                      outputs=result["outputs"])
    return time.perf_counter() - started, per_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mnist", default=os.environ.get("GNOMON_MNIST_SOURCE"),
                        help="folder of the four MNIST IDX files (default: $GNOMON_MNIST_SOURCE)")
    parser.add_argument("--sample", action="store_true", help="use the shipped 1,000/300 MNIST sample (smoke run)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--home", type=Path, help="GNOMON_HOME to use (default: a temporary folder)")
    parser.add_argument("--skip-separate", action="store_true", help="do not time the separate processes")
    parser.add_argument("--all-demos", action="store_true",
                        help="also run (and time) the adversarial_embedding and clean_label workflows")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    mnist = str(REPO / "tests" / "data" / "mnist_sample") if args.sample else args.mnist
    if not mnist:
        parser.error("--mnist (or GNOMON_MNIST_SOURCE, or --sample) is required")
    home = args.home or Path(tempfile.mkdtemp(prefix="gnomon-bench-workflow-"))
    env = dict(os.environ, GNOMON_HOME=str(home), GNOMON_MNIST_SOURCE=mnist, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("MLFLOW_TRACKING_URI", None)
    print(f"GNOMON_HOME={home}  MNIST={mnist}  epochs={args.epochs}  load average {os.getloadavg()[0]:.1f}")

    # untimed: prepare MNIST folders and warm the decoded-dataset cache (validation loads both splits)
    _run([GNOMON, "data", "mnist"], env, "MNIST preparation")
    _run([GNOMON, "workflow", "validate", "baseline"], env, "workflow validation")

    tag = uuid.uuid4().hex[:6]
    figures: dict[str, float] = {}
    plain_json = home / f"plain-{tag}.json"
    figures["plain_s"], out = _run([sys.executable, str(REPO / "benchmarks" / "plain_baseline_demo.py"),
                                    "--mnist", mnist, "--epochs", str(args.epochs), "--json", str(plain_json)],
                                   env, "plain script")
    print(f"plain ART + Keras script: {figures['plain_s']:.1f} s")
    print(out)

    figures["workflow_s"], out = _run([GNOMON, "workflow", "run", "baseline", "-P", f"epochs={args.epochs}",
                                       "--experiment", f"bench-workflow-{tag}", "--no-progress"],
                                      env, "workflow")
    print(f"gnomon workflow run baseline: {figures['workflow_s']:.1f} s")
    print(out)

    if not args.skip_separate:
        sys.path.insert(0, str(REPO))
        from gnomon.core.workflows import load_workflow
        from gnomon.core.workflows.spec import apply_overrides
        from gnomon.plugins.builtin.workflows import workflow_path

        wf = load_workflow(workflow_path("baseline"))
        variables = apply_overrides(wf, {"epochs": str(args.epochs)})
        figures["separate_s"], per_step = run_separately(env, f"bench-separate-{tag}", variables)
        print(f"20 separate 'gnomon run' processes: {figures['separate_s']:.1f} s "
              f"(per step: {', '.join(f'{s:.0f}' for s in per_step)} s)")

    if args.all_demos:
        for demo in ("adversarial_embedding", "clean_label"):
            figures[f"{demo}_s"], out = _run([GNOMON, "workflow", "run", demo, "-P", f"epochs={args.epochs}",
                                              "--experiment", f"bench-{demo}-{tag}", "--no-progress"],
                                             env, demo)
            print(f"gnomon workflow run {demo}: {figures[f'{demo}_s']:.1f} s")
            print(out)

    ratio = figures["workflow_s"] / figures["plain_s"]
    print()
    print(f"{'':34}{'wall s':>9}{'ratio':>9}")
    print(f"{'plain ART + Keras script':34}{figures['plain_s']:>9.1f}{1.0:>9.2f}")
    print(f"{'gnomon workflow run baseline':34}{figures['workflow_s']:>9.1f}{ratio:>9.2f}   (target <= 1.15)")
    if "separate_s" in figures:
        print(f"{'separate gnomon run processes':34}{figures['separate_s']:>9.1f}"
              f"{figures['separate_s'] / figures['plain_s']:>9.2f}   "
              f"(separate / workflow = {figures['separate_s'] / figures['workflow_s']:.2f})")
    for demo in ("adversarial_embedding", "clean_label"):
        if f"{demo}_s" in figures:
            print(f"{'gnomon workflow run ' + demo:34}{figures[f'{demo}_s']:>9.1f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (2 cores)")
    if args.json:
        args.json.write_text(json.dumps({**figures, "workflow_over_plain": ratio, "epochs": args.epochs,
                                         "mnist": mnist}, indent=2))
    if not args.home:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
