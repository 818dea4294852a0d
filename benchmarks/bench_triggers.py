"""Benchmark the backdoor triggers through the baseline attack on full MNIST, and what the defenses do to them.

For each trigger (pattern, blended, sig, warp; ``--triggers`` picks), through gnomon's tasks in one
embedded MLflow store (``--home``, default a fresh temporary folder):

1. reference: ``train`` a clean le_net (the clean accuracy every backdoored model is compared to,
   measured in the same run, with the same epochs and seed);
2. ``gen_poison_test_data label_type=train poison_fraction=0.1 target_class=1 trigger=T`` on the
   60,000 training images, then ``train`` le_net on it (the baseline attack);
3. ``gen_poison_test_data label_type=test poison_fraction=1.0 trigger=T`` on the 10,000 test images;
4. ``infer`` on the clean and on the triggered test set: clean accuracy (CA) and attack success
   rate (ASR: among triggered images whose true class is not 1, the fraction predicted as 1);
5. each preprocessing defense task (3x3 median smoothing, JPEG q50, Gaussian noise sigma 0.3, as in the demos)
   on the clean and on the triggered test set: CA and ASR after the defense.

Prints one table per part, with the issue's bars (ASR >= 95%, >= 90% for warp; CA within 1 pt of the
clean model) and the published anchors. Usage::

    nice -n 5 .venv/bin/python benchmarks/bench_triggers.py                 # full MNIST, 3 epochs (slow)
    .venv/bin/python benchmarks/bench_triggers.py --sample --epochs 1       # smoke test on the shipped sample
    ... --triggers warp --trigger-options '{"warp": {"strength": 1.0}}'    # try other options
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
FULL_MNIST = Path(os.environ.get("GNOMON_MNIST_SOURCE") or REPO.parent / "shared" / "data" / "mnist")
SAMPLE_MNIST = REPO / "tests" / "data" / "mnist_sample"
TRIGGERS = ("pattern", "blended", "sig", "warp")
DEFENSES = (
    ("spatial_smoothing", {"spatial_smoothing_window_size": 3}, "smoothing 3x3"),
    ("jpeg_compression", {"jpeg_compression_quality": 50}, "JPEG q50"),
    ("gaussian_augmentation", {"gaussian_augmentation_sigma": 0.3}, "noise 0.3"),
)
ASR_BAR = {"warp": 0.90}
# BackdoorBench's README results table (v1; CIFAR-10, PreAct-ResNet18, no defense; the README labels the table
# "poison ratio = 1%"). BackdoorBench has no MNIST results; ART's notebook is the MNIST anchor for the pattern.
ANCHORS = {
    "pattern": "ART poisoning notebook (MNIST, 7,500 train images): CA 97.6%, ASR 96.9%; BackdoorBench BadNets: "
               "CA 91.32%, ASR 95.03%",
    "blended": "BackdoorBench Blended: CA 93.47%, ASR 99.92%",
    "sig": "BackdoorBench SIG (clean label): CA 84.48%, ASR 98.27%",
    "warp": "BackdoorBench WaNet (with noise mode): CA 91.25%, ASR 89.73%",
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist", default=str(FULL_MNIST), help=f"folder of the four MNIST IDX files (default {FULL_MNIST})")
    ap.add_argument("--sample", action="store_true", help="use the shipped 1,000/300 MNIST sample (smoke test)")
    ap.add_argument("--epochs", type=float, default=3.0, help="training epochs of every model (default 3)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", default=None, help="GNOMON_HOME to use (default: a new temporary folder)")
    ap.add_argument("--triggers", default=",".join(TRIGGERS), help="comma-separated triggers to run")
    ap.add_argument("--trigger-options", default="{}",
                    help='JSON {trigger: {option: value}} overriding the triggers\' defaults')
    ap.add_argument("--no-defenses", action="store_true", help="skip the defense part")
    ap.add_argument("--no-reference", action="store_true",
                    help="train no clean model (run triggers in parallel processes; --combine takes the reference "
                         "from a run that has one)")
    ap.add_argument("--reuse-clean", action="store_true",
                    help="reuse the clean model an earlier run left in --home (its accuracy is the reference)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--combine", nargs="+", default=None,
                    help="print one table from the --json files of earlier (parallel) runs and exit")
    return ap.parse_args(argv)


def combine(args) -> int:
    """One table from several runs' JSON (e.g. triggers run in parallel against one clean model)."""
    ref_acc, attacks, defenses = None, [], []
    for name in args.combine:
        data = json.loads(Path(name).read_text())
        ref_acc = ref_acc if ref_acc is not None else data.get("ref_acc")
        args.epochs, args.sample = data["epochs"], data["sample"]
        attacks += [a for a in data["attacks"] if a["trigger"] not in {b["trigger"] for b in attacks}]
        defenses += [d for d in data["defenses"] if (d["trigger"], d["defense"]) not in
                     {(e["trigger"], e["defense"]) for e in defenses}]
    order = {t: i for i, t in enumerate(TRIGGERS)}
    attacks.sort(key=lambda a: order.get(a["trigger"], len(order)))
    print_tables(args, ref_acc, attacks, defenses)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.combine:
        return combine(args)
    home = Path(args.home or tempfile.mkdtemp(prefix="gnomon-bench-triggers-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["GNOMON_HOME"] = str(home)
    os.environ["GNOMON_MNIST_SOURCE"] = str(SAMPLE_MNIST if args.sample else args.mnist)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    triggers = [t.strip() for t in args.triggers.split(",") if t.strip()]
    overrides = json.loads(args.trigger_options)

    from gnomon.core.datasets import mnist_dir
    from gnomon.core.engine import Engine
    from gnomon.core.plugins import load_plugins

    engine = Engine(load_plugins(environ={}), experiment="bench_triggers", show_progress=False)
    load = os.getloadavg()[0]
    print(f"bench_triggers: {'sample' if args.sample else 'full'} MNIST, le_net, {args.epochs:g} epochs, batch "
          f"{args.batch_size}, seed {args.seed}, cpus {os.cpu_count()}, load {load:.2f}, home {home}", flush=True)
    train_dir, test_dir = str(mnist_dir("training")), str(mnist_dir("testing"))
    times: dict[str, float] = {}

    def run(label, task, **params):
        started = time.perf_counter()
        result = engine.run(task, {"seed": args.seed, **params})
        times[label] = time.perf_counter() - started
        shown = {k: round(v, 4) for k, v in result.metrics.items()
                 if k in ("accuracy", "attack_success_rate", "n_poisoned", "l2_mean", "linf_max")}
        print(f"[{time.strftime('%H:%M:%S')}] {label:<28} {times[label]:7.1f} s  run {result.run_id[:8]}  {shown}",
              flush=True)
        return result

    training = {"epochs": args.epochs, "batch_size": args.batch_size, "model_architecture": "le_net",
                "register_model": True, "data_dir_test": test_dir}
    clean_name = "bench_triggers_clean_le_net"
    versions = engine.mlflow_client().search_model_versions(f"name='{clean_name}'") if args.reuse_clean else []
    if args.no_reference:
        ref_acc = None
    elif versions:
        version = max(versions, key=lambda v: int(v.version))
        ref = f"{clean_name}/{version.version}"
        ref_acc = engine.mlflow_client().get_run(version.run_id).data.metrics["accuracy"]
        print(f"reusing clean model {ref} (accuracy {ref_acc:.4f})")
    else:
        clean = run("clean train", "train", model_tag="clean", data_dir_train=train_dir, **training)
        ref = f"{clean.outputs['model_name']}/{clean.outputs['model_version']}"
        ref_acc = clean.metrics["accuracy"]

    attack_rows, defense_rows = [], []

    def save():  # after each trigger, so a long run interrupted later still leaves its results
        if args.json:
            Path(args.json).write_text(json.dumps({"ref_acc": ref_acc, "epochs": args.epochs, "sample": args.sample,
                                                   "load_start": load, "attacks": attack_rows,
                                                   "defenses": defense_rows, "times": times}, indent=2))
    for trigger in triggers:
        trig = {"trigger": trigger, "trigger_options": json.dumps(overrides.get(trigger, {}))}
        poison = run(f"{trigger}: poison train", "gen_poison_test_data", data_dir=train_dir, label_type="train",
                     poison_fraction=0.1, target_class=1, output_tar_name=f"{trigger}_train.tar.gz",
                     output_dataset_name=f"{trigger}_train", **trig)
        model = run(f"{trigger}: train", "train", model_tag=trigger, load_dataset_from_mlruns=True,
                    training_dataset_run_id=poison.run_id, dataset_tar_name=f"{trigger}_train.tar.gz",
                    dataset_name=f"{trigger}_train", **training)
        model_ref = f"{model.outputs['model_name']}/{model.outputs['model_version']}"
        test = run(f"{trigger}: poison test", "gen_poison_test_data", data_dir=test_dir, label_type="test",
                   poison_fraction=1.0, target_class=1, output_tar_name=f"{trigger}_test.tar.gz",
                   output_dataset_name=f"{trigger}_test", **trig)
        triggered = {"load_dataset_from_mlruns": True, "dataset_run_id": test.run_id,
                     "dataset_tar_name": f"{trigger}_test.tar.gz", "dataset_name": f"{trigger}_test"}
        ca = run(f"{trigger}: infer clean", "infer", model=model_ref, data_dir=test_dir, batch_size=256)
        asr = run(f"{trigger}: infer triggered", "infer", model=model_ref, run_id=test.run_id,
                  dataset_tar_name=f"{trigger}_test.tar.gz", dataset_name=f"{trigger}_test", batch_size=256)
        row = {"trigger": trigger, "options": overrides.get(trigger, {}), "ca": ca.metrics["accuracy"],
               "asr": asr.metrics["attack_success_rate"], "l2_mean": test.metrics.get("l2_mean"),
               "linf_max": test.metrics.get("linf_max"), "train_s": times[f"{trigger}: train"],
               "poison_s": times[f"{trigger}: poison train"]}
        attack_rows.append(row)
        if args.no_defenses:
            save()
            continue
        for name, params, title in DEFENSES:
            on_clean = run(f"{trigger}: {title} clean", name, model=model_ref, data_dir=test_dir, batch_size=256,
                           **params)
            on_trig = run(f"{trigger}: {title} triggered", name, model=model_ref, batch_size=256, **triggered,
                          **params)
            defense_rows.append({"trigger": trigger, "defense": title, "ca": on_clean.metrics["accuracy"],
                                 "asr": on_trig.metrics.get("attack_success_rate")})

        save()
    save()
    print_tables(args, ref_acc, attack_rows, defense_rows)
    return 0


def print_tables(args, ref_acc, attack_rows, defense_rows) -> None:
    ref_text = "no clean reference" if ref_acc is None else f"clean model CA {ref_acc:.2%} (same store)"
    print(f"\nBaseline attack (10% of training relabelled to 1) on {'sample' if args.sample else 'full'} MNIST, "
          f"le_net, {args.epochs:g} epochs; {ref_text}")
    print(f"{'trigger':<9} {'options':<28} {'CA':>7} {'vs clean':>9} {'ASR':>8} {'L2 mean':>8} {'Linf max':>8} "
          f"{'bar':<28} {'meets'}")
    for r in attack_rows:
        r["pass"] = r["asr"] >= ASR_BAR.get(r["trigger"], 0.95) and ref_acc is not None and r["ca"] >= ref_acc - 0.01
        bar = f"ASR >= {ASR_BAR.get(r['trigger'], 0.95):.0%}, CA >= clean - 1 pt"
        print(f"{r['trigger']:<9} {json.dumps(r['options']) if r['options'] else 'defaults':<28} {r['ca']:7.2%} "
              f"{'-' if ref_acc is None else format(100 * (r['ca'] - ref_acc), '+.2f'):>7}pt {r['asr']:8.2%} {r['l2_mean'] or 0:8.3f} {r['linf_max'] or 0:8.3f} "
              f"{bar:<28} {'yes' if r['pass'] else 'NO'}")
    if defense_rows:
        print("\nWhat the preprocessing defenses do (each trigger's backdoored model; CA on the defended clean "
              "test set, ASR on the defended triggered one):")
        titles = [t for _, _, t in DEFENSES]
        print(f"{'trigger':<9} {'none':>15} " + " ".join(f"{t:>17}" for t in titles))
        for r in attack_rows:
            cells = [f"{r['ca']:6.2%}/{r['asr']:7.2%}"]
            for t in titles:
                d = next((d for d in defense_rows if d["trigger"] == r["trigger"] and d["defense"] == t), None)
                cells.append("-" if d is None else f"{d['ca']:6.2%}/{d['asr']:7.2%}")
            print(f"{r['trigger']:<9} {cells[0]:>15} " + " ".join(f"{c:>17}" for c in cells[1:]))
        print("(cells: CA / ASR)")
    print("\nPublished anchors:")
    for key, text in ANCHORS.items():
        print(f"  {key}: {text}")


if __name__ == "__main__":
    sys.exit(main())
