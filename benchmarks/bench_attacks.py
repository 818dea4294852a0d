"""Benchmark the three backdoor-poisoning attacks on full MNIST with le_net, task by task.

Runs the seed's sequences through gnomon's engine (real TensorFlow, ART and an MLflow store
in a throwaway GNOMON_HOME):

1. reference: ``train`` a clean le_net (its test accuracy is the reference every attack is
   compared to, measured in the same run);
2. baseline: ``gen_poison_test_data`` (label_type=train, 10% of the training set, target 1)
   -> ``train`` on it -> ``infer`` on a fully triggered test set (attack success rate) and
   on the clean test set;
3. adversarial embedding: ``gen_poison_model`` -> ``infer`` (clean and triggered);
4. clean label: ``gen_poison_clean_data`` (proxy = the clean model, a third of class 1)
   -> ``train`` on it -> ``infer`` (clean and triggered).

Prints a table with each attack's clean accuracy, its difference to the clean model,
attack success rate, wall time (and its ratio to the clean training time), the issue's bar
and the published anchors. Usage::

    nice -n 10 .venv/bin/python benchmarks/bench_attacks.py            # full MNIST (slow)
    .venv/bin/python benchmarks/bench_attacks.py --sample --epochs 1   # smoke test on the shipped sample
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FULL_MNIST = REPO.parent / "shared" / "data" / "mnist"
SAMPLE_MNIST = REPO / "tests" / "data" / "mnist_sample"

ANCHORS = {
    "baseline": "ART notebook (pattern, 7,500 train imgs): clean 97.6%, ASR 96.9%; Dioptra: clean ~98.7%",
    "adv_embedding": "ART adversarial-embedding notebook: clean 84%",
    "clean_label": "ART clean-label notebook: clean 98.3%, ~99% of triggered misclassified",
}
BARS = {
    "baseline": "ASR >= 99%, clean acc >= reference - 0.5 pt",
    "adv_embedding": "ASR >= 95%, clean acc >= 98%",
    "clean_label": "ASR >= 90%, clean acc >= 98%",
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default=str(FULL_MNIST), help=f"folder of the four MNIST IDX files (default {FULL_MNIST})")
    ap.add_argument("--sample", action="store_true", help="use the shipped 1,000/300 MNIST sample (smoke test)")
    ap.add_argument("--epochs", type=float, default=5.0, help="training epochs of every model (default 5)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", default=None, help="GNOMON_HOME to use (default: a new temporary folder)")
    ap.add_argument("--only", default="baseline,adv_embedding,clean_label",
                    help="comma-separated attacks to run (the clean reference always runs)")
    ap.add_argument("--ae-regularization", type=float, default=None,
                    help="gen_poison_model regularization_factor (default: the task's default)")
    ap.add_argument("--ae-poison-fraction", type=float, default=0.1)
    ap.add_argument("--cl-norm", default=None, help="gen_poison_clean_data norm (default: the task's)")
    ap.add_argument("--cl-eps", type=float, default=None)
    ap.add_argument("--cl-eps-step", type=float, default=None)
    ap.add_argument("--cl-max-iter", type=int, default=None)
    ap.add_argument("--data-root", default=None,
                    help="folder holding prepared MNIST 'training' and 'testing' class folders (skips preparation)")
    ap.add_argument("--no-reference", action="store_true",
                    help="do not train the clean reference model (only with --only adv_embedding)")
    ap.add_argument("--combine", nargs="+", default=None,
                    help="print one table from the --json files of earlier (parallel) runs and exit")
    ap.add_argument("--reuse-clean", action="store_true",
                    help="reuse the clean model (and triggered test set) an earlier run left in --home")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    return ap.parse_args(argv)


class Bench:
    """Runs tasks through one engine and keeps timings."""

    def __init__(self, args):
        from gnomon.core.engine import Engine
        from gnomon.core.plugins import load_plugins

        self.args = args
        self.engine = Engine(load_plugins(environ={}), experiment="bench_attacks", show_progress=False)
        self.times: dict[str, float] = {}

    def run(self, label: str, task: str, params: dict):
        started = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {label}: {task} {json.dumps(params, default=str)}", flush=True)
        result = self.engine.run(task, {"seed": self.args.seed, **params})
        took = time.perf_counter() - started
        self.times[label] = took
        shown = {k: round(v, 4) for k, v in result.metrics.items()
                 if k in ("accuracy", "attack_success_rate", "test_accuracy", "n_poisoned", "l2_mean", "linf_max",
                          "pgd_proxy_misclassified", "training_time_s", "attack_time_s")}
        print(f"           {took:7.1f} s  run {result.run_id[:8]}  {shown}", flush=True)
        return result


def training(args) -> dict:
    return {"epochs": args.epochs, "batch_size": args.batch_size, "model_architecture": "le_net",
            "register_model": True}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.combine:
        return combine(args)
    home = Path(args.home or tempfile.mkdtemp(prefix="gnomon-bench-attacks-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["GNOMON_HOME"] = str(home)
    os.environ["GNOMON_MNIST_SOURCE"] = str(SAMPLE_MNIST if args.sample else args.mnist)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    only = {a.strip() for a in args.only.split(",") if a.strip()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_attacks: {'sample' if args.sample else 'full'} MNIST, le_net, {args.epochs:g} epochs, "
          f"batch {args.batch_size}, seed {args.seed}, cpus {os.cpu_count()}, load {load:.2f}, home {home}",
          flush=True)

    if args.data_root:
        train_dir, test_dir = (str(Path(args.data_root) / split) for split in ("training", "testing"))
    else:
        from gnomon.core.datasets import mnist_dir

        train_dir, test_dir = str(mnist_dir("training")), str(mnist_dir("testing"))
    bench = Bench(args)
    rows = []

    # -- reference: the clean model --------------------------------------------------
    earlier = find_earlier(bench.engine) if args.reuse_clean else None
    if earlier:
        clean_ref, ref_acc, ref_time, triggered_run = earlier
        bench.times["clean_train"] = ref_time
        print(f"reusing clean model {clean_ref} (accuracy {ref_acc:.4f}, {ref_time:.0f} s) and triggered test set "
              f"of run {triggered_run[:8]}", flush=True)
    else:
        if args.no_reference:
            clean_ref, ref_acc, ref_time = None, None, None
        else:
            clean = bench.run("clean_train", "train", {**training(args), "model_tag": "clean",
                                                       "data_dir_train": train_dir, "data_dir_test": test_dir})
            clean_ref = f"{clean.outputs['model_name']}/{clean.outputs['model_version']}"
            ref_acc = clean.metrics["accuracy"]
            ref_time = bench.times["clean_train"]
        # the triggered test set every attack is measured on (all 10,000 test images, true labels)
        triggered_run = bench.run("trigger_test", "gen_poison_test_data", {
            "data_dir": test_dir, "label_type": "test", "poison_fraction": 1.0, "target_class": 1,
            "output_tar_name": "triggered_test.tar.gz", "output_dataset_name": "triggered_test"}).run_id

    def measure(model_ref: str, label: str) -> tuple[float, float]:
        acc = bench.run(f"{label}_infer_clean", "infer", {"model": model_ref, "data_dir": test_dir})
        asr = bench.run(f"{label}_infer_triggered", "infer", {
            "model": model_ref, "run_id": triggered_run, "dataset_tar_name": "triggered_test.tar.gz",
            "dataset_name": "triggered_test"})
        return acc.metrics["accuracy"], asr.metrics["attack_success_rate"]

    if ref_acc is not None:
        rows.append({"attack": "clean model (reference)", "key": "reference", "clean_acc": ref_acc, "asr": None,
                     "attack_s": None, "total_s": ref_time})

    if "baseline" in only:
        poison = bench.run("baseline_poison", "gen_poison_test_data", {
            "data_dir": train_dir, "label_type": "train", "poison_fraction": 0.1, "target_class": 1,
            "output_tar_name": "baseline_train.tar.gz", "output_dataset_name": "baseline_train"})
        model = bench.run("baseline_train", "train", {
            **training(args), "model_tag": "baseline", "load_dataset_from_mlruns": True,
            "training_dataset_run_id": poison.run_id, "dataset_tar_name": "baseline_train.tar.gz",
            "dataset_name": "baseline_train", "data_dir_test": test_dir})
        acc, asr = measure(f"{model.outputs['model_name']}/{model.outputs['model_version']}", "baseline")
        rows.append({"attack": "baseline (10% of train, target 1)", "key": "baseline", "clean_acc": acc, "asr": asr,
                     "attack_s": bench.times["baseline_poison"],
                     "total_s": bench.times["baseline_poison"] + bench.times["baseline_train"],
                     "pass": asr >= 0.99 and ref_acc is not None and acc >= ref_acc - 0.005})

    if "adv_embedding" in only:
        params = {**training(args), "model_tag": "adv_embedding", "data_dir_train": train_dir,
                  "data_dir_test": test_dir, "target_class_id": 1, "poison_fraction": args.ae_poison_fraction}
        if args.ae_regularization is not None:
            params["regularization_factor"] = args.ae_regularization
        model = bench.run("ae_train", "gen_poison_model", params)
        acc, asr = measure(f"{model.outputs['model_name']}/{model.outputs['model_version']}", "ae")
        rows.append({"attack": f"adversarial embedding ({args.ae_poison_fraction:g} poisoned)", "key": "adv_embedding",
                     "clean_acc": acc, "asr": asr, "attack_s": bench.times["ae_train"],
                     "total_s": bench.times["ae_train"], "pass": asr >= 0.95 and acc >= 0.98})

    if "clean_label" in only:
        params = {"data_dir": train_dir, "model": clean_ref, "target_class": 1, "poison_fraction": 1 / 3,
                  "output_tar_name": "clean_label_train.tar.gz", "output_dataset_name": "clean_label_train"}
        for key, value in (("norm", args.cl_norm), ("eps", args.cl_eps), ("eps_step", args.cl_eps_step),
                           ("max_iter", args.cl_max_iter)):
            if value is not None:
                params[key] = value
        poison = bench.run("cl_poison", "gen_poison_clean_data", params)
        model = bench.run("cl_train", "train", {
            **training(args), "model_tag": "clean_label", "load_dataset_from_mlruns": True,
            "training_dataset_run_id": poison.run_id, "dataset_tar_name": "clean_label_train.tar.gz",
            "dataset_name": "clean_label_train", "data_dir_test": test_dir})
        acc, asr = measure(f"{model.outputs['model_name']}/{model.outputs['model_version']}", "cl")
        rows.append({"attack": "clean label (1/3 of class 1, proxy = clean)", "key": "clean_label", "clean_acc": acc,
                     "asr": asr, "attack_s": bench.times["cl_poison"],
                     "total_s": bench.times["cl_poison"] + bench.times["cl_train"],
                     "pass": asr >= 0.90 and acc >= 0.98})

    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "times": bench.times, "epochs": args.epochs,
                                               "sample": args.sample, "ref_acc": ref_acc, "ref_time": ref_time,
                                               "load": load}, indent=2))
    print_table(rows, ref_acc, ref_time, args)
    return 0


def combine(args) -> int:
    """One table from the JSON results of several (parallel) runs; the first reference found is used."""
    rows, ref_acc, ref_time = [], None, None
    for name in args.combine:
        data = json.loads(Path(name).read_text())
        if ref_acc is None and data.get("ref_acc") is not None:
            ref_acc, ref_time = data["ref_acc"], data["ref_time"]
            rows.extend(r for r in data["rows"] if r["key"] == "reference")
        rows.extend(r for r in data["rows"] if r["key"] != "reference")
        args.epochs, args.sample = data["epochs"], data["sample"]
    print_table(rows, ref_acc, ref_time, args)
    return 0


def find_earlier(engine):
    """(clean model ref, its accuracy, its train wall time, triggered-test run id) from an earlier run, or None."""
    client = engine.mlflow_client()
    versions = client.search_model_versions("name='bench_attacks_clean_le_net'")
    if not versions:
        return None
    version = max(versions, key=lambda v: int(v.version))
    run = client.get_run(version.run_id)
    experiment = client.get_experiment_by_name("bench_attacks")
    triggered = client.search_runs([experiment.experiment_id],
                                   "tags.`gnomon.task` = 'gen_poison_test_data' and params.label_type = 'test' "
                                   "and attributes.status = 'FINISHED'", max_results=1)
    if not triggered:
        return None
    return (f"{version.name}/{version.version}", run.data.metrics["accuracy"], run.data.metrics["gnomon_wall_time_s"],
            triggered[0].info.run_id)


def print_table(rows, ref_acc, ref_time, args) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Backdoor poisoning on {'sample' if args.sample else 'full'} MNIST, le_net, "
                        f"{args.epochs:g} epochs (reference = clean model, same run)")
    for col in ("attack", "clean acc", "vs ref (pt)", "ASR", "attack s", "total s", "total / ref train", "bar",
                "meets bar"):
        table.add_column(col)
    for r in rows:
        asr = "-" if r["asr"] is None else f"{100 * r['asr']:.2f}%"
        diff = "-" if r["key"] == "reference" or ref_acc is None else f"{100 * (r['clean_acc'] - ref_acc):+.2f}"
        table.add_row(r["attack"], f"{100 * r['clean_acc']:.2f}%", diff, asr,
                      "-" if r["attack_s"] is None else f"{r['attack_s']:.0f}", f"{r['total_s']:.0f}",
                      f"{r['total_s'] / ref_time:.2f}" if ref_time else "-", BARS.get(r["key"], ""),
                      "" if "pass" not in r else ("yes" if r["pass"] else "NO"))
    console = Console(width=200)
    console.print(table)
    console.print("Published anchors:")
    for key, text in ANCHORS.items():
        console.print(f"  {key}: {text}")


if __name__ == "__main__":
    sys.exit(main())
