"""Builtin part: the bodies of the detection tasks (see :mod:`.detection_tasks` for their parameters)."""

from __future__ import annotations

import time
from typing import Any

from .detection_tasks import CLEANED_NAME, cleaned_tar_name, parse_classes


class Timer:
    """Named wall-clock stages, logged as ``time_<stage>_s``."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, stage: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timer.times[f"time_{stage}_s"] = timer.times.get(f"time_{stage}_s", 0.0) + time.perf_counter() - self.start

        return _Stage()


def _load_model(ctx, params):
    from gnomon.core.models import load_registered_model

    return load_registered_model(ctx, params["model"])


def _ground_truth(dataset):
    """The poisoned mask, or None when the dataset does not record which samples were poisoned."""
    return dataset.poison_ground_truth()


def _section(ctx, title: str, metrics: list[tuple[str, str]], *, tables=None, figures=()) -> None:
    """The report section a workflow report shows for this step (``report_section.json``)."""
    ctx.log_json({"title": title, "metrics": [list(m) for m in metrics], "tables": tables or [],
                  "figures": list(figures)}, "report_section.json")


# -- the two poison detectors -------------------------------------------------------------------

def _screen(ctx, params, detect) -> dict[str, Any]:
    """Shared body: load, run ``detect(classifier, x, y_onehot) -> (is_clean, extras)``, score, write the cleaned set."""
    import numpy as np

    from gnomon.core.datasets import resolve_dataset, write_dataset_artifact
    from gnomon.core.models import fit_to_model, one_hot

    from .detection_art import art_classifier
    from .detection_metrics import flag_scores, per_class

    timer = Timer()
    with timer("load"):
        dataset = resolve_dataset(ctx, params, run_id_field="dataset_run_id")
        model = _load_model(ctx, params)
    truth = _ground_truth(dataset)
    examined = parse_classes(params.get("classes"))
    rows = np.arange(len(dataset))
    classifier = art_classifier(model)
    x = fit_to_model(dataset.x, model)
    y1h = one_hot(dataset.y, dataset.n_classes)
    ctx.seed_tensorflow()
    with ctx.progress(ctx.task, total=None), timer("detect"):
        is_clean, extras = detect(classifier, x, y1h)
    with timer("metrics"):
        flagged = ~np.asarray(is_clean, dtype=bool)
        if examined is not None:
            # ART analyses every class on its own (the 'distance' analysis also compares class medians, so it
            # sees all the data); only the flags in the examined classes are kept
            flagged &= np.isin(dataset.y, examined)
        metrics: dict[str, float] = {"n_samples": len(dataset), "n_flagged": int(flagged.sum()),
                                     "flagged_fraction": float(flagged.mean())}
        if truth is not None:
            metrics["n_poisoned"] = int(truth.sum())
            metrics.update(flag_scores(flagged, truth))
        breakdown = per_class(flagged, dataset.y, dataset.class_names, truth)
    ctx.log_metrics(metrics)
    for row in breakdown:
        ctx.log_metric(f"flagged_class_{row['class']}", row["flagged"])
    ids = np.flatnonzero(flagged)
    ctx.log_json({"indices": ids.tolist(), "files": None if dataset.files is None else [dataset.files[i] for i in ids]},
                 "detection/flagged.json")
    ctx.log_json(breakdown, "detection/per_class.json")

    with timer("figure"):
        fig = extras["figure"](dataset, rows, truth)
        ctx.log_figure(fig, "detection/projection.png")

    with timer("write_artifact"):
        cleaned = dataset.subset(np.flatnonzero(~flagged))
        entry = {"name": ctx.task, "run_id": ctx.run_id, "removed": int(flagged.sum()),
                 "options": {k: params[k] for k in extras["options"]}}
        cleaned.metadata["defense"] = ctx.task
        cleaned.metadata["defenses"] = list(dataset.metadata.get("defenses") or []) + [entry]
        tar = cleaned_tar_name(ctx.task)
        write_dataset_artifact(ctx, cleaned, tar, CLEANED_NAME)
    ctx.log_metrics(timer.times)
    _report_detector(ctx, metrics, breakdown, truth is not None)
    summary = (f"flagged {int(flagged.sum())} of {len(dataset)}"
               + (f": precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, F1 {metrics['f1']:.3f}"
                  if truth is not None else " (no ground truth recorded)"))
    ctx.info(summary)
    return {"dataset_run_id": ctx.run_id, "dataset_tar_name": tar, "dataset_name": CLEANED_NAME,
            "n_flagged": int(flagged.sum())}


def _report_detector(ctx, metrics, breakdown, known: bool) -> None:
    shown = [("samples flagged", f"{int(metrics['n_flagged'])} of {int(metrics['n_samples'])}")]
    if known:
        shown += [("poisoned samples", str(int(metrics["n_poisoned"]))), ("precision", f"{metrics['precision']:.3f}"),
                  ("recall", f"{metrics['recall']:.3f}"), ("F1", f"{metrics['f1']:.3f}")]
    columns = ["class", "samples", "flagged"] + (["poisoned", "flagged & poisoned"] if known else [])
    rows = [[r["name"], r["samples"], r["flagged"]] + ([r["poisoned"], r["flagged_poisoned"]] if known else [])
            for r in breakdown]
    _section(ctx, ctx.task.replace("_", " "), shown, tables=[{"columns": columns, "rows": rows}],
             figures=["detection/projection.png"])


def _by_class(values, y, n_classes):
    import numpy as np

    return [values[np.asarray(y) == c] for c in range(n_classes)]


def _pca2(points):
    """First two principal components (points with fewer than 2 columns are padded)."""
    import numpy as np

    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3 or points.shape[1] < 2:
        return np.column_stack([points[:, :1] if points.shape[1] else np.zeros((len(points), 1)),
                                np.zeros((len(points), 1))])
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def activation_clustering(ctx, **params) -> dict[str, Any]:
    """Flag poisoned samples with ART's ActivationDefence; write the cleaned training set."""
    import numpy as np

    from .detection_art import run_activation_clustering
    from .detection_figures import projection_figure

    def detect(classifier, x, y1h):
        is_clean, report, defence = run_activation_clustering(
            classifier, x, y1h, layer=params.get("layer"), nb_clusters=params["nb_clusters"],
            nb_dims=params["nb_dims"], reduce=params["reduce"], cluster_analysis=params["cluster_analysis"],
            ex_re_threshold=params.get("ex_re_threshold"), ex_re_epochs=params.get("ex_re_epochs", 1))
        from gnomon.core.jsonable import jsonable

        ctx.log_json(jsonable(report), "detection/art_report.json")

        def figure(dataset, rows, truth):
            y = dataset.y[rows]
            poisoned = None if truth is None else _by_class(truth[rows], y, dataset.n_classes)
            points = [_pca2(r) if len(r) else np.zeros((0, 2)) for r in defence.red_activations_by_class]
            return projection_figure(points, defence.clusters_by_class, poisoned, dataset.class_names,
                                     title=f"Activation clustering: {params['reduce']} of the activations, 2-D, "
                                           f"coloured by cluster ({params['cluster_analysis']} analysis)",
                                     group_label="cluster", seed=ctx.seed)

        return is_clean, {"figure": figure,
                          "options": ("layer", "nb_clusters", "nb_dims", "reduce", "cluster_analysis", "ex_re_threshold",
                                       "ex_re_epochs", "classes")}

    return _screen(ctx, params, detect)


def spectral_signatures(ctx, **params) -> dict[str, Any]:
    """Flag poisoned samples with ART's SpectralSignatureDefense; write the cleaned training set."""
    import numpy as np

    from .detection_art import run_spectral_signatures
    from .detection_figures import projection_figure

    def detect(classifier, x, y1h):
        seen = {}
        original = classifier.get_activations

        def keep_activations(*args, **kwargs):  # the features ART computes, kept for the picture
            seen["features"] = original(*args, **kwargs)
            return seen["features"]

        classifier.get_activations = keep_activations
        is_clean, report = run_spectral_signatures(classifier, x, y1h, expected_pp_poison=params["expected_pp_poison"],
                                                   eps_multiplier=params["eps_multiplier"],
                                                   batch_size=params["batch_size"])

        def figure(dataset, rows, truth):
            y = dataset.y[rows]
            feats = np.reshape(seen["features"], (len(rows), -1))
            poisoned = None if truth is None else _by_class(truth[rows], y, dataset.n_classes)
            points = [_pca2(f) if len(f) else np.zeros((0, 2)) for f in _by_class(feats, y, dataset.n_classes)]
            groups = _by_class((~np.asarray(is_clean, dtype=bool)).astype(int), y, dataset.n_classes)
            return projection_figure(points, groups, poisoned, dataset.class_names,
                                     title="Spectral signatures: activations on their top two principal directions "
                                           "(the first is the signature); group 1 = flagged",
                                     group_label="flagged =", seed=ctx.seed)

        return is_clean, {"figure": figure, "options": ("expected_pp_poison", "eps_multiplier", "classes")}

    return _screen(ctx, params, detect)


# -- STRIP ----------------------------------------------------------------------------------------

def _folder_or_mnist(ctx, folder, split):
    from gnomon.core.datasets import resolve_dataset

    return resolve_dataset(ctx, {"data_dir": folder}, run_id_field="dataset_run_id", default_split=split)


def _sample(ctx, n_total: int, n: int):
    import numpy as np

    if n >= n_total:
        return np.arange(n_total)
    return np.sort(ctx.rng.choice(n_total, size=n, replace=False))


def strip(ctx, **params) -> dict[str, Any]:
    """Screen triggered and clean inputs with ART's STRIP entropy; ROC, detection at fixed false alarms, abstention."""
    import numpy as np

    from gnomon.core.datasets import resolve_dataset
    from gnomon.core.models import fit_to_model

    from .detection_art import art_classifier, strip_entropies, strip_threshold
    from .detection_figures import entropy_figure
    from .detection_metrics import roc_summary

    timer = Timer()
    with timer("load"):
        data = resolve_dataset(ctx, params, run_id_field="dataset_run_id")
        clean = _folder_or_mnist(ctx, params.get("clean_data_dir"), "testing")
        reference = _folder_or_mnist(ctx, params.get("reference_data_dir"), "training")
        model = _load_model(ctx, params)
    mask = data.poisoned_mask()
    target = data.metadata.get("target_class")
    if not mask.any():
        raise ValueError("the dataset records no triggered samples (metadata 'poisoned_files'); STRIP needs "
                         "triggered inputs to measure detection (e.g. gen_poison_test_data label_type=test)")
    trig_rows = np.flatnonzero(mask)
    trig_rows = trig_rows[_sample(ctx, len(trig_rows), int(params["n_inputs"]))]
    clean_rows = _sample(ctx, len(clean), int(params["n_inputs"]))
    ref_rows = _sample(ctx, len(reference), int(params["n_reference"]))
    x_val = fit_to_model(reference.x[ref_rows], model)
    x_trig = fit_to_model(data.x[trig_rows], model)
    x_clean = fit_to_model(clean.x[clean_rows], model)
    batch = int(params["batch_size"])

    # the superimpositions: ART's own forward pass (what ART's STRIP calls), not gnomon's remembered predict,
    # whose content hash and copy of every random batch buy nothing (no batch is ever predicted twice)
    forward = art_classifier(model)

    def predict_fn(x):
        return forward.predict(x, batch_size=max(batch * 4, 256))

    k = int(params["num_samples"])
    total = len(x_val) + len(x_trig) + len(x_clean)
    with ctx.progress("STRIP entropies", total=total) as advance, timer("detect"):
        val_h = strip_entropies(predict_fn, x_val, x_val, num_samples=k, chunk=batch, advance=advance,
                                 formula=params["entropy_formula"])
        threshold = strip_threshold(val_h, float(params["false_acceptance_rate"]))
        trig_h = strip_entropies(predict_fn, x_trig, x_val, num_samples=k, chunk=batch, advance=advance,
                                 formula=params["entropy_formula"])
        clean_h = strip_entropies(predict_fn, x_clean, x_val, num_samples=k, chunk=batch, advance=advance,
                                 formula=params["entropy_formula"])
    with timer("metrics"):
        roc = roc_summary(clean_h, trig_h)
        trig_flag, clean_flag = trig_h <= threshold, clean_h <= threshold
        p_trig = np.argmax(predict_fn(x_trig), axis=1)
        p_clean = np.argmax(predict_fn(x_clean), axis=1)
        y_trig, y_clean = data.y[trig_rows], clean.y[clean_rows]
        metrics = {"roc_auc": roc["roc_auc"], "detection_at_far_1pct": roc["detection_at_far_1pct"],
                   "detection_at_far_5pct": roc["detection_at_far_5pct"], "entropy_threshold": threshold,
                   "detection_rate": float(trig_flag.mean()), "false_alarm_rate": float(clean_flag.mean()),
                   "n_triggered": len(trig_rows), "n_clean": len(clean_rows), "n_reference": len(ref_rows),
                   "clean_accuracy": float(np.mean(p_clean == y_clean)),
                   "clean_accuracy_abstain": float(np.mean((p_clean == y_clean) & ~clean_flag)),
                   "triggered_accuracy": float(np.mean(p_trig == y_trig)),
                   "triggered_accuracy_abstain": float(np.mean((p_trig == y_trig) & ~trig_flag))}
        if target is not None and (y_trig != int(target)).any():
            other = y_trig != int(target)
            metrics["attack_success_rate"] = float(np.mean(p_trig[other] == int(target)))
            metrics["attack_success_rate_abstain"] = float(np.mean((p_trig[other] == int(target)) & ~trig_flag[other]))
    ctx.log_metrics(metrics)
    ctx.log_metrics(timer.times)
    ctx.log_json({"fpr": roc["fpr"], "tpr": roc["tpr"], "clean_entropy": clean_h.tolist(),
                  "triggered_entropy": trig_h.tolist()}, "strip/entropies.json")
    ctx.log_figure(entropy_figure(clean_h, trig_h, threshold, title=f"STRIP: ROC AUC {roc['roc_auc']:.3f}, detection "
                                  f"{metrics['detection_rate']:.1%} at {metrics['false_alarm_rate']:.1%} false alarms"),
                   "strip/entropy.png")
    shown = [("ROC AUC", f"{metrics['roc_auc']:.3f}"),
             ("detection at 1% / 5% false alarms",
              f"{metrics['detection_at_far_1pct']:.1%} / {metrics['detection_at_far_5pct']:.1%}"),
             (f"at ART's threshold (FAR {params['false_acceptance_rate']}): detection / false alarms",
              f"{metrics['detection_rate']:.1%} / {metrics['false_alarm_rate']:.1%}"),
             ("clean accuracy, flagged inputs abstaining",
              f"{metrics['clean_accuracy_abstain']:.1%} (without STRIP {metrics['clean_accuracy']:.1%})")]
    if "attack_success_rate" in metrics:
        shown.append(("ASR, flagged inputs abstaining",
                      f"{metrics['attack_success_rate_abstain']:.1%} (without STRIP {metrics['attack_success_rate']:.1%})"))
    _section(ctx, "STRIP", shown, figures=["strip/entropy.png"])
    ctx.info(f"ROC AUC {roc['roc_auc']:.3f}; detection {metrics['detection_at_far_1pct']:.1%} at 1% and "
             f"{metrics['detection_at_far_5pct']:.1%} at 5% false alarms")
    return {"roc_auc": metrics["roc_auc"]}


# -- Neural Cleanse -------------------------------------------------------------------------------

def neural_cleanse(ctx, **params) -> dict[str, Any]:
    """Reverse-engineer triggers per class with ART NeuralCleanse; optionally repair and register the model."""
    import keras
    import numpy as np

    from gnomon.core.datasets import resolve_dataset
    from gnomon.core.models import (
        fit_to_model,
        log_and_register,
        one_hot,
        recorded_architecture,
        registered_model_name,
    )

    from .detection_art import mitigate_with, neural_cleanse, outlier_detection
    from .detection_figures import trigger_grid

    timer = Timer()
    with timer("load"):
        data = resolve_dataset(ctx, params, run_id_field="dataset_run_id")
        shared = _load_model(ctx, params)
    # ART modifies the model it is given (unlearning, pruning): work on a copy of the shared one
    model = keras.models.clone_model(shared)
    model.set_weights(shared.get_weights())
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    rows = _sample(ctx, len(data), int(params["n_validation"]))
    x_val = fit_to_model(data.x[rows], model).astype(np.float32)
    y_val = one_hot(data.y[rows], data.n_classes)
    ctx.seed_tensorflow()
    nc = neural_cleanse(model, params, rng=ctx.rng)
    n_classes = nc.nb_classes
    with ctx.progress("neural cleanse (classes)", total=n_classes) as advance, timer("detect"):
        masks, patterns, norms, anomaly, flagged = outlier_detection(nc, x_val, y_val, advance=advance)
    metrics: dict[str, float] = {"n_flagged_classes": len(flagged), "n_validation": len(rows)}
    for c in range(n_classes):
        metrics[f"mask_l1_class_{c}"] = float(norms[c])
        metrics[f"anomaly_index_class_{c}"] = float(anomaly[c])
        metrics[f"search_steps_class_{c}"] = float(nc.steps_by_class[c])
    ctx.log_metrics(metrics)
    ctx.log_json({"flagged_classes": flagged, "l1_norms": norms.tolist(), "anomaly_index": anomaly.tolist()},
                 "neural_cleanse/outliers.json")
    npz = ctx.workdir / "masks.npz"
    np.savez_compressed(npz, masks=masks, patterns=patterns)
    ctx.log_artifact(npz, "neural_cleanse")
    names = data.class_names
    ctx.log_figure(trigger_grid(masks, patterns, norms, anomaly, flagged, names), "neural_cleanse/triggers.png")
    ctx.set_tag("gnomon.neural_cleanse.flagged", ",".join(map(str, flagged)) or "none")
    ctx.output("flagged_classes", ",".join(map(str, flagged)))
    ctx.info(f"anomaly index per class: {', '.join(f'{names[c]}={anomaly[c]:.2f}' for c in range(n_classes))}; "
             f"flagged: {', '.join(names[c] for c in flagged) or 'none'}")

    outputs: dict[str, Any] = {"flagged_classes": ",".join(map(str, flagged))}
    shown = [("flagged classes", ", ".join(names[c] for c in flagged) or "none"),
             ("anomaly index (flagged)", ", ".join(f"{names[c]}: {anomaly[c]:.2f}" for c in flagged) or "-")]
    table = {"columns": ["class", "mask L1 norm", "anomaly index", "flagged"],
             "rows": [[names[c], f"{norms[c]:.1f}", f"{anomaly[c]:.2f}", "yes" if c in flagged else ""]
                      for c in range(n_classes)]}
    mitigation = params["mitigation"]
    if mitigation != "none":
        x_fix, y_fix = x_val, y_val
        if params.get("n_mitigation") is not None:
            # its own sample, drawn after the search so the search's draws (and result) do not change
            fix_rows = _sample(ctx, len(data), int(params["n_mitigation"]))
            x_fix = fit_to_model(data.x[fix_rows], model).astype(np.float32)
            y_fix = one_hot(data.y[fix_rows], data.n_classes)
        with timer("mitigate"):
            n_examples = mitigate_with(nc, x_fix, y_fix, masks, patterns, flagged, mitigation,
                                       unlearning_data=params["unlearning_data"], rng=ctx.rng)
        metrics = _repaired_metrics(ctx, params, nc, model, mitigation)
        metrics.update(n_mitigation=len(x_fix), n_mitigation_examples=n_examples)
        ctx.log_metrics(metrics)
        shown += [(f"after {mitigation}: clean accuracy", f"{metrics.get('repaired_accuracy', float('nan')):.1%}")]
        if "repaired_attack_success_rate" in metrics:
            shown.append((f"after {mitigation}: ASR", f"{metrics['repaired_attack_success_rate']:.1%}"))
        ctx.log_metric("mitigation_applied", float(bool(flagged)))
        if mitigation in ("unlearning", "pruning"):
            architecture = recorded_architecture(ctx, params["model"]) or model.name
            name = registered_model_name(ctx.experiment_name or "gnomon", architecture, params["model_tag"])
            with timer("register"):
                outputs.update(log_and_register(ctx, model, name, True, architecture=architecture,
                                                class_names=names, example=x_val[:2]))
    ctx.log_metrics(timer.times)
    _section(ctx, "Neural Cleanse" + ("" if mitigation == "none" else f" with {mitigation}"), shown, tables=[table],
             figures=["neural_cleanse/triggers.png"])
    return outputs


def _repaired_metrics(ctx, params, nc, model, mitigation) -> dict[str, float]:
    """Clean accuracy and ASR of the repaired model (for filtering: of ART's abstaining classifier)."""
    import numpy as np

    from gnomon.core.datasets import read_dataset_artifact
    from gnomon.core.models import evaluate, fit_to_model

    clean = _folder_or_mnist(ctx, params.get("test_data_dir"), "testing")
    sets = [("", clean)]
    if params.get("triggered_run_id"):
        sets.append(("triggered_", read_dataset_artifact(ctx, str(params["triggered_run_id"]),
                                                         params["triggered_tar_name"],
                                                         params["triggered_dataset_name"])))
    out: dict[str, float] = {}
    for prefix, dataset in sets:
        if mitigation != "filtering":
            result = evaluate(model, dataset, batch_size=int(params["eval_batch_size"]), ctx=ctx)
            out[f"repaired_{prefix}accuracy"] = result["accuracy"]
            if "attack_success_rate" in result:
                out["repaired_attack_success_rate"] = result["attack_success_rate"]
            continue
        from .detection_art import quiet_stdout

        with quiet_stdout():
            probs = nc.predict(fit_to_model(dataset.x, model).astype(np.float32), batch_size=256)
        abstained = ~np.any(probs, axis=1)
        preds = np.argmax(probs, axis=1)
        correct = (preds == dataset.y) & ~abstained
        out[f"repaired_{prefix}accuracy"] = float(correct.mean())
        out[f"repaired_{prefix}abstain_rate"] = float(abstained.mean())
        target = dataset.metadata.get("target_class")
        mask = dataset.poisoned_mask()
        if prefix and target is not None and mask.any():
            other = mask & (dataset.y != int(target))
            out["repaired_attack_success_rate"] = float(np.mean((preds[other] == int(target)) & ~abstained[other]))
    return out
