"""Benchmark: a sweep that shares identical steps against the same runs made one by one.

The baseline demo over 3 poison fractions x 3 seeds at ``epochs=0.2`` (full MNIST by default):

- **sweep**: one ``gnomon workflow run baseline --sweep poison_fraction=... --sweep seed=...`` process;
- **separate**: the 9 equivalent ``gnomon workflow run baseline -P poison_fraction=F -P seed=S``
  processes, one after another, in the same benchmark run.

Printed: trainings counted from MLflow for each (expected: the sweep trains 3 clean and 9 poisoned
models, the separate runs 9 and 9), steps run and shared, the wall times and their ratio
``sweep / separate`` (target <= 0.7), and whether every combination's results table equals the
separate run's. MNIST is prepared and its decoded cache warmed before anything is timed. The
machine may be loaded: the ratio measured in one run is the meaningful figure.

Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_sweep.py --mnist /work/shared/data/mnist
    .venv/bin/python benchmarks/bench_sweep.py --sample --fractions 0.1,0.3 --seeds 0,1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_workflow import _run  # noqa: E402  (the same timed subprocess call)

REPO = Path(__file__).resolve().parents[1]
GNOMON = str(Path(sys.executable).parent / "gnomon")


def _trainings(env: dict[str, str], experiment: str) -> dict[str, int]:
    """Finished ``train`` runs in ``experiment``, by model tag (read from MLflow, like a user would)."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("GNOMON_")})
    sys.path.insert(0, str(REPO))
    from gnomon.core.engine import Engine

    client = Engine(experiment=experiment).mlflow_client()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`gnomon.task` = 'train'", max_results=1000)
    out: dict[str, int] = {}
    for run in runs:
        tag = run.data.params.get("model_tag", "?")
        out[tag] = out.get(tag, 0) + 1
    return out


def _rows(report_dir: Path) -> list[dict]:
    return json.loads((report_dir / "results.json").read_text())["rows"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", default=os.environ.get("GNOMON_MNIST_SOURCE", "/work/shared/data/mnist"))
    parser.add_argument("--sample", action="store_true", help="use the shipped 1,000/300 MNIST sample")
    parser.add_argument("--epochs", default="0.2")
    parser.add_argument("--fractions", default="0.01,0.05,0.1")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--extra", nargs="*", default=[], help="more -P NAME=VALUE for every run")
    parser.add_argument("--keep", action="store_true", help="keep the GNOMON_HOME used")
    args = parser.parse_args(argv)
    mnist = str(REPO / "tests" / "data" / "mnist_sample") if args.sample else args.mnist
    home = Path(tempfile.mkdtemp(prefix="gnomon-bench-sweep-"))
    env = {**os.environ, "GNOMON_HOME": str(home), "GNOMON_MNIST_SOURCE": mnist, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)
    params = ["-P", f"epochs={args.epochs}"] + [x for p in args.extra for x in ("-P", p)]
    fractions, seeds = args.fractions.split(","), args.seeds.split(",")
    try:
        warm, _ = _run([GNOMON, "data", "mnist"], env, "MNIST preparation")
        print(f"MNIST prepared in {warm:.1f} s ({mnist}); GNOMON_HOME {home}", flush=True)

        sweep_s, out = _run([GNOMON, "workflow", "run", "baseline", *params, "--sweep", f"poison_fraction={args.fractions}",
                             "--sweep", f"seed={args.seeds}", "--experiment", "bench-sweep", "--no-progress", "--json",
                             "--report-dir", str(home / "sweep-report")], env, "the sweep")
        sweep = json.loads(out)
        print(f"sweep: {sweep_s:.1f} s, {sweep['combinations']} combinations, {sweep['steps_ran']} steps ran, "
              f"{sweep['steps_shared']} shared", flush=True)

        separate_s = 0.0
        separate: dict[tuple[str, str], str] = {}
        for fraction in fractions:
            for seed in seeds:
                report = home / f"report-{fraction}-{seed}"
                elapsed, out = _run([GNOMON, "workflow", "run", "baseline", *params, "-P", f"poison_fraction={fraction}",
                                     "-P", f"seed={seed}", "--experiment", "bench-separate", "--no-progress", "--json",
                                     "--report-dir", str(report)], env, f"run {fraction}/{seed}")
                separate_s += elapsed
                separate[fraction, seed] = str(report)
                print(f"  separate run poison_fraction={fraction} seed={seed}: {elapsed:.1f} s", flush=True)

        trained_sweep = _trainings(env, "bench-sweep")
        trained_separate = _trainings(env, "bench-separate")
        # each combination of the sweep gives the same table as its separate run
        from gnomon.core.engine import Engine
        from gnomon.core.workflows.report_data import result_rows, workflow_steps

        client = Engine(experiment="bench-sweep").mlflow_client()
        same = 0
        for combo in sweep["workflow_runs"]:
            values = combo["values"]
            key = next(k for k in separate if float(k[0]) == float(values["poison_fraction"])
                       and int(k[1]) == int(values["seed"]))
            _, steps = workflow_steps(client, combo["run_id"])
            theirs = _rows(Path(separate[key]))
            ours = [{k: v for k, v in vars(r).items() if k in theirs[0]}
                    for r in result_rows(steps, "accuracy", "attack_success_rate")]
            same += ours == theirs
        ratio = sweep_s / separate_s
        print()
        print(f"trainings (from MLflow): sweep {trained_sweep}, separate runs {trained_separate}")
        print(f"sweep {sweep_s:.1f} s vs {len(separate)} separate runs {separate_s:.1f} s: ratio {ratio:.2f} "
              f"(target <= 0.7)")
        print(f"combinations whose results table equals the separate run's: {same}/{len(separate)}")
        print(json.dumps({"sweep_s": round(sweep_s, 1), "separate_s": round(separate_s, 1), "ratio": round(ratio, 3),
                          "trainings_sweep": trained_sweep, "trainings_separate": trained_separate,
                          "steps_ran": sweep["steps_ran"], "steps_shared": sweep["steps_shared"],
                          "identical_tables": f"{same}/{len(separate)}", "epochs": args.epochs}))
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
