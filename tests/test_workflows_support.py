"""Small real tasks (no TensorFlow) for testing the workflow machinery, registered as a test plugin.

Not a test module: it holds the plugin (``register_tasks``) and a ``CALLS`` log of every
task execution so tests can tell a step that ran from one that was skipped. The dataset
tasks write real dataset artifacts in the documented layout (``<name>/<class>/<file>.png``
plus ``<name>/gnomon-dataset.json``) and the evaluation task reads them back.
"""

from __future__ import annotations

import json
import tarfile

from marshmallow import fields, validate

from gnomon.core.fields import Bool, ModelRef
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import DatasetSource, TaskSchema
from gnomon.core.tasks import Task

CALLS: list[tuple[str, dict]] = []
#: wf_fail with interrupt=true raises KeyboardInterrupt while this holds an item
ARMED: list[bool] = []

class EmitSchema(TaskSchema):
    value = fields.Integer(load_default=1, validate=validate.Range(min=1), metadata={"description": "a number"})
    label = fields.String(load_default="x")
    epochs = fields.Integer(load_default=3, validate=validate.Range(min=1))


def emit(ctx, value, label, epochs, seed):
    """Logs a per-epoch 'loss' curve and returns outputs like a training task."""
    CALLS.append(("wf_emit", {"value": value, "label": label}))
    for epoch in range(epochs):
        ctx.log_metrics({"train_loss": value / (epoch + 1), "val_loss": value / (epoch + 1.5),
                         "train_accuracy": 1 - 1 / (epoch + 2)}, step=epoch + 1)
    return {"model_name": f"model_{label}", "model_version": value}


class UseSchema(TaskSchema):
    source_run = fields.String(required=True)
    model = ModelRef(required=True)
    factor = fields.Float(load_default=1.0, validate=validate.Range(min=0.0, min_inclusive=False))


def use(ctx, source_run, model, factor, seed):
    CALLS.append(("wf_use", {"source_run": source_run, "model": model}))
    ctx.log_metric("factor", factor)
    return {"echo": model}


class FailSchema(TaskSchema):
    reason = fields.String(load_default="the task broke on purpose")
    interrupt = Bool(load_default=False, metadata={"description": "raise KeyboardInterrupt once if ARMED"})
    succeed = Bool(load_default=False, metadata={"description": "do not fail after all"})


def fail(ctx, reason, interrupt, succeed, seed):
    CALLS.append(("wf_fail", {}))
    if interrupt and ARMED:  # interrupt once, as a user pressing Ctrl-C would
        ARMED.clear()
        raise KeyboardInterrupt
    if succeed:
        return {"ok": 1}
    raise RuntimeError(reason)


class MakeDataSchema(TaskSchema):
    triggered = Bool(load_default=False)
    shift = fields.Integer(load_default=0, metadata={"description": "a 'defense': darkens every image by shift"})
    source_run = fields.String(load_default=None, allow_none=True)
    target_class = fields.Integer(load_default=0)


def make_data(ctx, triggered, shift, source_run, target_class, seed):
    """Writes a 3-class dataset of 12x12 images (4 per class); triggered images get a white corner square."""
    import numpy as np
    from PIL import Image

    CALLS.append(("wf_make_data", {"triggered": triggered, "shift": shift}))
    root = ctx.workdir / "data"
    poisoned = []
    rng = np.random.default_rng(7)
    for cls in range(3):
        for i in range(4):
            image = (rng.random((12, 12)) * 120).astype(np.uint8) + np.uint8(40 * cls)
            rel = f"{cls}/img_{cls}_{i}.png"
            if triggered:
                image[8:11, 8:11] = 255
                poisoned.append(rel)
            image = np.clip(image.astype(int) - shift, 0, 255).astype(np.uint8)
            (root / str(cls)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / rel)
    meta = {"target_class": target_class, "poisoned_files": poisoned, "class_names": ["0", "1", "2"],
            "label_type": "test"}
    (root / "gnomon-dataset.json").write_text(json.dumps(meta))
    tar_path = ctx.workdir / "data.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root, arcname="toy")
    ctx.log_artifact(tar_path)
    return {"n_poisoned": len(poisoned)}


class EvalSchema(TaskSchema, DatasetSource("dataset_run_id", default_tar="data.tar", default_name="toy")):
    model = fields.String(required=True)
    accuracy = fields.Float(required=True, metadata={"description": "the accuracy to report"})


def evaluate(ctx, model, accuracy, data_dir, load_dataset_from_mlruns, dataset_run_id, dataset_tar_name,
             dataset_name, seed):
    """Reads the dataset artifact back and logs accuracy and the fraction of triggered images as ASR."""
    import mlflow

    CALLS.append(("wf_eval", {"model": model}))
    local = mlflow.MlflowClient().download_artifacts(dataset_run_id, dataset_tar_name, str(ctx.workdir))
    with tarfile.open(local) as tar:
        meta = json.loads(tar.extractfile(f"{dataset_name}/gnomon-dataset.json").read())
        n = sum(1 for m in tar.getmembers() if m.name.endswith(".png"))
    metrics = {"accuracy": accuracy}
    if meta["poisoned_files"]:
        metrics["attack_success_rate"] = len(meta["poisoned_files"]) / n / 2
    ctx.log_metrics(metrics)


@hookimpl
def register_tasks(register):
    register(Task(name="wf_emit", summary="emit outputs", schema=EmitSchema, fn=emit))
    register(Task(name="wf_use", summary="use outputs", schema=UseSchema, fn=use))
    register(Task(name="wf_fail", summary="always fails", schema=FailSchema, fn=fail))
    register(Task(name="wf_make_data", summary="toy dataset artifact", schema=MakeDataSchema, fn=make_data))
    register(Task(name="wf_eval", summary="toy evaluation", schema=EvalSchema, fn=evaluate))

