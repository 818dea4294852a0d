"""Builtin part: the ``train``, ``infer`` and ``init_model`` tasks (Dioptra's common entry points).

Parameters follow the seed (docs: ``gnomon tasks show train``); heavy libraries are imported
inside the task functions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from gnomon.core.fields import Bool, NonNegativeInt, PositiveFloat, PositiveInt, RegistryName
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import DatasetSource, ModelArchitecture, RegisteredModel, TaskSchema, Training
from gnomon.core.tasks import Task

if TYPE_CHECKING:
    from gnomon.core.context import CheckContext

from .conventions import ADV_TESTING_NAME, ADV_TESTING_TAR, DEFAULT_MODEL

#: What train's apply_defense needs: ``fit_adversarial`` of this sibling module (imported relatively,
#: so a synced copy on a worker uses its own sibling, not the worker's installed one).
ADVERSARIAL_MODULE = "adversarial_training"

#: Weight files Keras would download for ``weights=imagenet`` (looked for in the Keras cache).
IMAGENET_FILES = {
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels.h5",
}
#: BGR means of Keras' "caffe" preprocessing (ResNet50 and VGG16 ImageNet weights).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def fit_adversarial_available() -> Any:
    """``fit_adversarial`` from the adversarial-training module, or ``None`` if it is not available."""
    import importlib

    try:
        module = importlib.import_module(f".{ADVERSARIAL_MODULE}", __package__)
    except ImportError:
        return None
    return getattr(module, "fit_adversarial", None)


# -- schemas ----------------------------------------------------------------
class TrainSchema(TaskSchema, ModelArchitecture(DEFAULT_MODEL), Training,
                  DatasetSource("training_dataset_run_id", data_dir_field="data_dir_train", default_split="training",
                                default_tar="adversarial_poison.tar.gz", default_name="adv_poison_data")):
    """Parameters of ``train``."""

    data_dir_test = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Folder of class subfolders of test images. Default: MNIST 'testing'."})
    register_model = Bool(load_default=True, metadata={
        "description": "Register the trained model in the MLflow model registry (a new version each run)."})
    validation_split = fields.Float(load_default=0.2, validate=validate.Range(0.0, 1.0, max_inclusive=False),
                                    metadata={"description": "Fraction of the training data held out for "
                                                             "validation (seeded, stratified), in [0, 1)."})
    early_stopping_patience = NonNegativeInt(load_default=0, metadata={
        "description": "Stop after this many epochs without improvement of the validation loss (training "
                       "loss without validation) and restore the best weights; 0 = off."})
    early_stopping_min_delta = fields.Float(load_default=0.0, validate=validate.Range(min=0.0), metadata={
        "description": "Smallest change of the monitored loss that counts as an improvement."})
    apply_defense = Bool(load_default=False, metadata={
        "description": "Train with Madry PGD adversarial training (the pgd_* parameters)."})
    pgd_eps = fields.Float(load_default=0.3, validate=validate.Range(min=0.0), metadata={
        "description": "apply_defense: L-infinity radius of the PGD examples (pixels in [0, 1])."})
    pgd_eps_step = PositiveFloat(load_default=0.05, metadata={"description": "apply_defense: PGD step size."})
    pgd_max_iter = NonNegativeInt(load_default=10, metadata={"description": "apply_defense: PGD iterations."})
    pgd_ratio = fields.Float(load_default=1.0, validate=validate.Range(0.0, 1.0, min_inclusive=False), metadata={
        "description": "apply_defense: fraction of each batch replaced by PGD examples (1 = Madry)."})

    @validates_schema
    def _defense_available(self, data, **kwargs):
        if data.get("apply_defense") and fit_adversarial_available() is None:
            raise ValidationError(
                "PGD adversarial training is not available yet in this installation "
                f"({ADVERSARIAL_MODULE}.fit_adversarial is missing); set apply_defense=false",
                "apply_defense")


class InferSchema(TaskSchema, RegisteredModel, DatasetSource("run_id", default_tar=ADV_TESTING_TAR,
                                                              default_name=ADV_TESTING_NAME)):
    """Parameters of ``infer``."""

    load_dataset_from_mlruns = Bool(load_default=None, allow_none=True, metadata={
        "description": "Read the dataset from the artifact of run 'run_id' instead of a folder. "
                       "Default: true when run_id is given (as in Dioptra), else false."})
    model_architecture = RegistryName("model", load_default=None, allow_none=True, metadata={
        "description": "Architecture of the registered model; default: the one recorded when it was "
                       "registered. If given, it must match."})
    batch_size = PositiveInt(load_default=32, metadata={"description": "Batch size for inference."})

    @post_load
    def _auto_mlruns(self, data, **kwargs):
        if data.get("load_dataset_from_mlruns") is None:
            data["load_dataset_from_mlruns"] = bool(data.get("run_id"))
        return data


class WeightsField(fields.String):
    """``imagenet``, ``none`` or the path of an existing Keras weights file (made absolute)."""

    def _deserialize(self, value, attr, data, **kwargs):
        return _weights_value(super()._deserialize(value, attr, data, **kwargs))


def _weights_value(value: str) -> str:
    from pathlib import Path

    if value.lower() in ("imagenet", "none"):
        return value.lower()
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValidationError(f"expected 'imagenet', 'none' or the path of a weights file; '{value}' is not a file")
    if not path.name.endswith((".h5", ".keras", ".weights.h5")):
        raise ValidationError(f"weights file '{value}' must be a Keras .h5 / .weights.h5 file")
    return str(path.resolve())


class InitModelSchema(TaskSchema):
    """Parameters of ``init_model``."""

    data_dir = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Folder of class subfolders of test images to evaluate on. Default: MNIST 'testing'."})
    model_tag = fields.String(load_default="", metadata={
        "description": "Tag in the registered model name: {EXPERIMENT}_{model_tag}_{model_architecture}."})
    model_architecture = fields.String(load_default="resnet50", validate=validate.OneOf(tuple(IMAGENET_FILES)),
                                       metadata={"description": "keras.applications model: resnet50 or vgg16."})
    batch_size = PositiveInt(load_default=32, metadata={"description": "Batch size for evaluation."})
    weights = WeightsField(load_default="imagenet", metadata={
        "description": "'imagenet' (Keras' ImageNet weights; needs them in the Keras cache or internet), "
                       "'none' (random init) or the path of a local weights file for the same model."})
    image_size = NonNegativeInt(load_default=0, metadata={
        "description": "Side the images are resized to inside the model; 0 = 224 with weights, else "
                       "the larger of 32 and the data's size."})
    num_classes = NonNegativeInt(load_default=0, metadata={
        "description": "Outputs of the model's top; 0 = 1000 with weights (ImageNet), else the data's classes."})
    register_model = Bool(load_default=True, metadata={"description": "Register the model in the registry."})

    @validates_schema
    def _check(self, data, **kwargs):
        size = data.get("image_size") or 0
        if size and size < 32:
            raise ValidationError("must be 0 (auto) or at least 32 (the architecture's minimum)", "image_size")
        if data.get("weights", "imagenet") == "imagenet":
            if data.get("num_classes") not in (0, 1000):
                raise ValidationError("ImageNet weights have 1000 classes; leave num_classes at 0", "num_classes")
            if data.get("model_architecture") == "vgg16" and size not in (0, 224):
                raise ValidationError("vgg16 with ImageNet weights needs image_size 224", "image_size")


# -- shared helpers ---------------------------------------------------------
def _align_classes(dataset, class_names: list[str], what: str):
    """Relabel ``dataset`` so its labels index ``class_names`` (matched by folder name)."""
    import numpy as np

    if list(dataset.class_names) == list(class_names):
        return dataset
    index = {name: i for i, name in enumerate(class_names)}
    missing = [c for c in dataset.class_names if c not in index]
    if missing:
        raise ValueError(f"{what} has classes {missing} that the model was not trained on "
                         f"(model classes: {', '.join(class_names)})")
    mapping = np.array([index[c] for c in dataset.class_names], dtype=np.int64)
    return dataset.replace(y=mapping[dataset.y], class_names=list(class_names))


def _log_eval(ctx, metrics: dict[str, float], prefix: str = "") -> None:
    ctx.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()})


# -- train ------------------------------------------------------------------
def train(ctx, **p) -> dict[str, Any]:
    """Train ``model_architecture`` on the training data, evaluate on the test set, log and register it."""
    import time

    from gnomon.core import models as M
    from gnomon.core.datasets import resolve_dataset, train_validation_split

    M.quiet_tensorflow()
    ctx.seed_tensorflow()
    train_all = resolve_dataset(ctx)  # the schema's DatasetSource: data_dir_train or training_dataset_run_id
    test = resolve_dataset(ctx, {"data_dir": p["data_dir_test"]}, run_id_field="run_id", default_split="testing")
    test = _align_classes(test, train_all.class_names, "the test set")
    if p["validation_split"] > 0:
        split_seed = int(ctx.rng.integers(0, 2**31 - 1))
        train_ds, val_ds = train_validation_split(train_all, p["validation_split"], seed=split_seed)
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise ValueError(f"validation_split={p['validation_split']} leaves an empty part "
                             f"of the {len(train_all)} training images")
    else:
        train_ds, val_ds = train_all, None
    n_classes, class_names = train_all.n_classes, list(train_all.class_names)
    del train_all  # the split copies are what training needs; do not hold the full array as well
    ctx.info(f"{len(train_ds)} training, {0 if val_ds is None else len(val_ds)} validation, {len(test)} test "
             f"images of {train_ds.image_shape}, {n_classes} classes")

    model = M.build_model(ctx, p["model_architecture"], train_ds.image_shape, n_classes)
    M.compile_model(model, p["optimizer"], p["learning_rate"])
    x, y = train_ds.x, M.one_hot(train_ds.y, n_classes)
    validation = None if val_ds is None else (val_ds.x, M.one_hot(val_ds.y, n_classes))
    batch_size = p["batch_size"]
    steps_per_epoch = -(-len(x) // batch_size)
    ctx.log_metrics({"n_train": len(x), "n_validation": 0 if val_ds is None else len(val_ds), "n_test": len(test)})

    started = time.perf_counter()
    if p["apply_defense"]:
        fit_adversarial = fit_adversarial_available()
        history = fit_adversarial(ctx, model, x, y, eps=p["pgd_eps"], eps_step=p["pgd_eps_step"],
                                  max_iter=p["pgd_max_iter"], ratio=p["pgd_ratio"], epochs=p["epochs"],
                                  batch_size=batch_size, validation_data=validation)
        for epoch in range(len(next(iter(history.values()), []))):
            values = {}
            for key, series in history.items():
                val = key.startswith("val_")
                values[f"{'val' if val else 'train'}_{key[4:] if val else key}"] = series[epoch]
            ctx.log_metrics(values, step=epoch + 1)
        epochs_done = len(next(iter(history.values()), []))
        ctx.log_metric("train_steps", M.total_steps(p["epochs"], steps_per_epoch))
    else:
        callbacks = []
        monitor = "val_loss" if validation is not None else "loss"
        stopper = M.early_stopping(p["early_stopping_patience"], monitor=monitor,
                                   min_delta=p["early_stopping_min_delta"])
        with ctx.progress(f"training {p['model_architecture']}",
                          total=M.total_steps(p["epochs"], steps_per_epoch)) as advance:
            progress_cb = M.training_callback(ctx, advance, epochs=p["epochs"], steps_per_epoch=steps_per_epoch)
            callbacks.append(progress_cb)
            if stopper is not None:
                callbacks.append(stopper)
            model.fit(x, y, batch_size=batch_size, epochs=M.epochs_to_run(p["epochs"]), validation_data=validation,
                      shuffle=True, callbacks=callbacks, verbose=0)
        epochs_done = len(progress_cb.epochs_logged)
        ctx.log_metric("train_steps", progress_cb.steps)
        if stopper is not None and stopper.stopped_epoch > 0:
            ctx.info(f"early stopping after epoch {stopper.stopped_epoch + 1}; best epoch {stopper.best_epoch + 1}")
    training_time = time.perf_counter() - started
    ctx.log_metrics({"training_time_s": training_time, "epochs_completed": epochs_done,
                     "mean_epoch_time_s": training_time / max(epochs_done, 1)})

    metrics = M.evaluate(model, test, batch_size=max(batch_size, 256), ctx=ctx)
    _log_eval(ctx, metrics)
    ctx.info(f"test accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}")

    name = M.registered_model_name(ctx.experiment_name, p["model_architecture"], p["model_tag"])
    out = M.log_and_register(ctx, model, name, p["register_model"], architecture=p["model_architecture"],
                             class_names=class_names, example=test.x)
    ctx.output("accuracy", round(float(metrics["accuracy"]), 6))
    del x, y, validation
    return {k: v for k, v in out.items() if k in ("model_name", "model_version", "model_uri")}


def check_train(ctx: CheckContext, params) -> dict[str, str]:
    """Preflight: the training dataset artifact (with load_dataset_from_mlruns) and folders exist."""
    from pathlib import Path

    from gnomon.core.datasets import check_dataset_source

    problems = dict(check_dataset_source(ctx))
    folder = params.get("data_dir_test")
    if folder and not Path(folder).expanduser().is_dir():
        problems["data_dir_test"] = f"'{folder}' is not a folder (expected <folder>/<class>/<images>)"
    return problems


# -- infer ------------------------------------------------------------------
def check_infer(ctx: CheckContext, params) -> dict[str, str]:
    """Preflight: the model version exists (and matches model_architecture); the dataset exists."""
    from gnomon.core import models as M
    from gnomon.core.datasets import check_dataset_source

    problems = M.check_model(ctx, params)
    problems.update(check_dataset_source(ctx))
    return problems


def infer(ctx, **p) -> dict[str, Any]:
    """Evaluate a registered model on a dataset artifact of another run, or on a folder."""
    import json

    from gnomon.core import models as M
    from gnomon.core.datasets import resolve_dataset

    M.quiet_tensorflow()
    ctx.seed_tensorflow()
    name, version = M.resolve_model_ref(ctx, p["model"])
    tags = M.model_version_tags(ctx, f"{name}/{version}")
    ctx.set_tag("gnomon.model", f"{name}/{version}")
    with ctx.progress(f"loading model {name}/{version}", total=None):
        model = M.load_registered_model(ctx, f"{name}/{version}")
    dataset = resolve_dataset(ctx)
    if tags.get(M.TAG_CLASS_NAMES):
        dataset = _align_classes(dataset, json.loads(tags[M.TAG_CLASS_NAMES]), "the dataset")
    ctx.info(f"evaluating {name}/{version} on {len(dataset)} images")
    metrics = M.evaluate(model, dataset, batch_size=p["batch_size"], ctx=ctx)
    _log_eval(ctx, metrics)
    ctx.log_json({"model": f"{name}/{version}", "metrics": metrics,
                  "dataset": {"n": len(dataset), "classes": dataset.class_names,
                              "source": dataset.metadata.get("source"),
                              "produced_by": dataset.metadata.get("produced_by"),
                              "target_class": dataset.metadata.get("target_class")}}, "inference.json")
    out = {"model_name": name, "model_version": version, "accuracy": round(metrics["accuracy"], 6)}
    if "attack_success_rate" in metrics:
        out["attack_success_rate"] = round(metrics["attack_success_rate"], 6)
    return out


# -- init_model -------------------------------------------------------------
def imagenet_weights_problem(architecture: str, timeout: float = 3.0) -> str | None:
    """``None`` if Keras can get the ImageNet weights (cached, or the download host answers), else why not."""
    import os
    import socket
    import threading
    from pathlib import Path

    cache = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models" / IMAGENET_FILES[architecture]
    if cache.is_file():
        return None
    hint = (f"pass a local copy with -P weights=/path/to/{IMAGENET_FILES[architecture]} "
            f"(or put it in {cache.parent}), or use -P weights=none")
    from gnomon.core import settings

    if settings.flag("GNOMON_OFFLINE"):
        return f"ImageNet weights for {architecture} are not in the Keras cache and GNOMON_OFFLINE is set: {hint}"
    result: dict[str, Any] = {}

    def probe():
        try:
            socket.create_connection(("storage.googleapis.com", 443), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    if result.get("ok"):
        return None
    reason = result.get("error") or "timed out"
    return f"cannot download ImageNet weights for {architecture} (offline: {reason}); {hint}"


def check_init_model(ctx: CheckContext, params) -> dict[str, str]:
    """Preflight: ImageNet weights obtainable; the data folder exists."""
    from pathlib import Path

    problems = {}
    if params.get("weights") == "imagenet":
        problem = imagenet_weights_problem(params["model_architecture"])
        if problem:
            problems["weights"] = problem
    folder = params.get("data_dir")
    if folder and not Path(folder).expanduser().is_dir():
        problems["data_dir"] = f"'{folder}' is not a folder (expected <folder>/<class>/<images>)"
    return problems


def build_pretrained(architecture: str, input_shape, *, weights: str, image_size: int, num_classes: int):
    """A keras.applications model wrapped to take [0, 1] NHWC images of ``input_shape``.

    Inside the model: resize to ``image_size`` square, grayscale -> RGB, and (with weights)
    Keras' "caffe" preprocessing as a fixed 1x1 convolution (x*255, RGB->BGR, minus the ImageNet
    means). ``weights``: "imagenet", "none" or a weights file path, loaded by keras.applications.
    """
    import keras
    import numpy as np
    from keras import layers

    from .models import adapt_input

    inputs, x = adapt_input(input_shape, 32)
    if tuple(x.shape[1:3]) != (image_size, image_size):
        x = layers.Resizing(image_size, image_size, interpolation="bilinear", name="resize_to_size")(x)
    if weights != "none":
        caffe = layers.Conv2D(3, 1, use_bias=True, trainable=False, name="caffe_preprocess")
        x = caffe(x)
        kernel = np.zeros((1, 1, 3, 3), dtype=np.float32)
        for out_c in range(3):
            kernel[0, 0, 2 - out_c, out_c] = 255.0
        caffe.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)])
    app = {"resnet50": keras.applications.ResNet50, "vgg16": keras.applications.VGG16}[architecture]
    base = app(include_top=True, weights=None if weights == "none" else weights,
               input_shape=(image_size, image_size, 3), classes=num_classes, name=architecture)
    return keras.Model(inputs, base(x), name=f"{architecture}_pretrained")


def init_model(ctx, **p) -> dict[str, Any]:
    """Load a keras.applications model (ImageNet weights, a local file, or random), evaluate and register it."""
    from gnomon.core import models as M
    from gnomon.core.datasets import resolve_dataset

    M.quiet_tensorflow()
    ctx.seed_tensorflow()
    dataset = resolve_dataset(ctx, p, run_id_field="run_id", default_split="testing")
    weights = p["weights"]
    if weights == "imagenet":
        problem = imagenet_weights_problem(p["model_architecture"])
        if problem:
            raise RuntimeError(problem)
    h, w, _ = dataset.image_shape
    image_size = p["image_size"] or (224 if weights != "none" else max(32, h, w))
    num_classes = p["num_classes"] or (1000 if weights != "none" else dataset.n_classes)
    if dataset.n_classes > num_classes:
        raise ValueError(f"the data has {dataset.n_classes} classes but the model has {num_classes} outputs")
    with ctx.progress(f"building {p['model_architecture']} ({'random init' if weights == 'none' else weights})",
                      total=None):
        try:
            model = build_pretrained(p["model_architecture"], dataset.image_shape, weights=weights,
                                     image_size=image_size, num_classes=num_classes)
        except ValueError as exc:
            raise ValueError(f"weights '{weights}' do not fit {p['model_architecture']} with image_size="
                             f"{image_size}, num_classes={num_classes}: {exc}") from exc
    M.compile_model(model, "adam", 0.001)
    metrics = M.evaluate(model, dataset, batch_size=p["batch_size"], ctx=ctx)
    _log_eval(ctx, metrics)
    ctx.info(f"accuracy {metrics['accuracy']:.4f} on {len(dataset)} images")
    name = M.registered_model_name(ctx.experiment_name, p["model_architecture"], p["model_tag"])
    out = M.log_and_register(ctx, model, name, p["register_model"], architecture=p["model_architecture"],
                             class_names=None if num_classes != dataset.n_classes else dataset.class_names,
                             example=dataset.x)
    return {k: v for k, v in out.items() if k in ("model_name", "model_version", "model_uri")}


@hookimpl
def register_tasks(register):
    """Register train, infer and init_model."""
    register(Task(
        name="train", summary="Train a model architecture on a dataset (folder or artifact) and register it.",
        schema=TrainSchema, fn=train, category="model", check=check_train,
        description="Metrics: per-epoch train_*/val_* curves (step = epoch), test loss/accuracy/precision/"
                    "recall/auc, training_time_s. Outputs model_name and model_version when registered."))
    register(Task(
        name="infer", summary="Evaluate a registered model on a dataset artifact of another run or a folder.",
        schema=InferSchema, fn=infer, category="evaluation", check=check_infer,
        description="Logs loss, accuracy, precision, recall, auc and, for triggered datasets, "
                    "attack_success_rate."))
    register(Task(
        name="init_model", summary="Load resnet50/vgg16 from keras.applications (ImageNet weights or a local "
                                   "file), evaluate and register it.",
        schema=InitModelSchema, fn=init_model, category="model", check=check_init_model))
