"""Builtin part: the seed's backdoor-poisoning attack tasks, on ART 1.20.

- ``gen_poison_test_data``: ART ``PoisoningAttackBackdoor`` applies a trigger to
  ``poison_fraction`` of a dataset (``label_type=test`` keeps the true labels, for measuring
  attack success; ``label_type=train`` relabels them to ``target_class``, the baseline
  attack's poisoned training set) and writes a dataset artifact.
- ``gen_poison_model``: ART ``PoisoningAttackAdversarialEmbedding`` trains a backdoored model
  with a secondary discriminator objective on a feature layer, then registers it like ``train``.
- ``gen_poison_clean_data``: ART ``PoisoningAttackCleanLabelBackdoor``: PGD (under an ``eps``
  budget, against a registered proxy model) then the trigger, on ``poison_fraction`` of the
  ``target_class`` samples, labels unchanged; writes a dataset artifact.

Every task records what it did: ``n_poisoned``, ``target_class`` and the perturbation's size
(:func:`gnomon.core.perturbation.distance_metrics`). Bad input (a target class the data or
model does not have, a missing proxy model, a feature layer the architecture does not have,
images of the wrong shape or a trigger that does not fit them) is refused by each task's
``check`` before any MLflow run exists. Heavy libraries are imported inside functions.
"""

from __future__ import annotations

import copy
import json
import math
import time
from typing import TYPE_CHECKING, Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from gnomon.core.fields import (
    Bool,
    FileName,
    Fraction,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    RegistryName,
    current_registry,
)
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import DatasetSource, ModelArchitecture, RegisteredModel, TaskSchema, Training
from gnomon.core.tasks import Task

if TYPE_CHECKING:
    from gnomon.core.context import CheckContext, Services, TaskContext

from .conventions import DEFAULT_MODEL
from .triggers import DEFAULT_TRIGGER, TRIGGER_KIND, TriggerError, make_trigger

LABEL_TYPES = ("test", "train")
NORMS = ("inf", "1", "2")

#: The artifact the poisoning tasks write unless told otherwise (the seed's names, which the
#: defense tasks read by default): tar ``adversarial_poison.tar.gz`` holding folder ``adv_poison_data``.
DEFAULT_TAR, DEFAULT_NAME = "adversarial_poison.tar.gz", "adv_poison_data"


# -- shared schema pieces ----------------------------------------------------------------


class JsonDict(fields.Dict):
    """A dict given as a Python dict or, on the command line, as a JSON object string."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return {}
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValidationError(f"expected a JSON object such as '{{\"distance\": 3}}': {exc.msg}") from None
            if not isinstance(value, dict):
                raise ValidationError(f"expected a JSON object, got {type(value).__name__}")
        return super()._deserialize(value, attr, data, **kwargs)


class TriggerParams(Schema):
    """``trigger`` (any registered trigger) and ``trigger_options`` (checked by building the trigger)."""

    trigger = RegistryName("attack", sub_kind=TRIGGER_KIND, load_default=DEFAULT_TRIGGER, metadata={
        "description": "Backdoor trigger: any registered trigger (builtin: pattern, single_pixel, image, blended, "
                       "sig, warp; see 'gnomon plugins list')."})
    trigger_options = JsonDict(keys=fields.String(), load_default=dict, metadata={
        "description": "Trigger options as a JSON object, e.g. '{\"distance\": 3}' for pattern, "
                       "'{\"path\": \"logo.png\", \"size\": 6}' for image, '{\"alpha\": 0.1}' for blended or "
                       "'{\"strength\": 1, \"grid_size\": 4}' for warp."})

    @validates_schema
    def _check_trigger_options(self, data, **kwargs):
        registry = current_registry()
        if registry is None or data.get("trigger") not in registry.names("attack", sub_kind=TRIGGER_KIND):
            return
        try:
            make_trigger(registry, data["trigger"], data.get("trigger_options") or {})
        except TriggerError as exc:
            raise ValidationError(str(exc), "trigger_options") from None


class PoisonOutput(Schema):
    """Where a poisoning task writes its dataset artifact."""

    output_tar_name = FileName(tar=True, load_default=None, allow_none=True, metadata={
        "description": f"Tar artifact the poisoned dataset is written to (default: {DEFAULT_TAR}). Pass it as "
                       "dataset_tar_name to infer, train or a defense."})
    output_dataset_name = FileName(load_default=None, allow_none=True, metadata={
        "description": f"Folder inside the tar (default: {DEFAULT_NAME}). Pass it as dataset_name to infer, "
                       "train or a defense."})


def _target_field(default: int = 1) -> fields.Integer:
    return NonNegativeInt(load_default=default, metadata={
        "description": "Class index the backdoor makes the model predict (must be one of the data's/model's classes)."})


# -- datasets: loaded once by check, handed to the task through the engine's store --------


def _load(ctx: TaskContext, params: dict[str, Any] | None = None, *, run_id_field: str | None = None,
          data_dir_field: str | None = None, default_split: str | None = None, keep: bool = False):
    """The dataset the params name (the task's own by default); a check (``keep``) leaves it for the run."""
    from gnomon.core.datasets import resolve_dataset
    from gnomon.core.datasets.resolve import source_settings

    params, run_id_field, data_dir_field, default_split = source_settings(ctx, params, run_id_field, data_dir_field,
                                                                          default_split)
    keys = ("load_dataset_from_mlruns", run_id_field, "dataset_tar_name", "dataset_name", data_dir_field)
    key = (ctx.tracking_uri, default_split, *(str(params.get(k)) for k in keys))
    dataset = ctx.store.peek_for_run(key) if keep else ctx.store.take_for_run(key)
    if dataset is None:
        dataset = resolve_dataset(ctx, params, run_id_field=run_id_field, data_dir_field=data_dir_field,
                                  default_split=default_split)
        if keep:
            ctx.store.keep_for_run(key, dataset)
    return dataset


def _load_test_set(ctx: TaskContext, data_dir: str | None, keep: bool = False):
    params = {"data_dir_test": data_dir, "load_dataset_from_mlruns": False}
    return _load(ctx, params, run_id_field="__none__", data_dir_field="data_dir_test", default_split="testing",
                 keep=keep)


def _dataset_problem(field: str, exc: Exception) -> dict[str, str]:
    return {field: str(exc)}


def _check_trigger_fits(registry: Any, params: dict[str, Any], dataset: Any) -> dict[str, str]:
    """Apply the trigger to one image: catches images the trigger cannot handle (shape, size)."""
    if len(dataset) == 0:
        return {}
    try:
        fn = make_trigger(registry, params["trigger"], params.get("trigger_options") or {})
        out = fn(dataset.x[:1].copy())
    except TriggerError as exc:
        return {"trigger": f"{exc} (dataset images are {dataset.image_shape})"}
    except Exception as exc:  # a plugin trigger failing on these images
        return {"trigger": f"trigger '{params['trigger']}' fails on the dataset's {dataset.image_shape} images: "
                           f"{type(exc).__name__}: {exc}"}
    if getattr(out, "shape", None) != dataset.x[:1].shape:
        return {"trigger": f"trigger '{params['trigger']}' returned shape {getattr(out, 'shape', None)} for input "
                           f"{dataset.x[:1].shape}; triggers must keep the shape"}
    return {}


def _check_target(field: str, target: int, n_classes: int, what: str) -> dict[str, str]:
    if not 0 <= int(target) < int(n_classes):
        return {field: f"target class {target} is outside the {what}'s classes 0..{int(n_classes) - 1}"}
    return {}


# -- shared helpers for the task bodies -------------------------------------------------


def _choose(ctx: Any, candidates, fraction: float):
    """``round(fraction * len(candidates))`` distinct candidates chosen with ``ctx.rng``, sorted."""
    import numpy as np

    candidates = np.asarray(candidates, dtype=np.int64)
    k = int(round(float(fraction) * len(candidates)))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(ctx.rng.choice(candidates, size=k, replace=False))


def _apply_backdoor(ctx: Any, backdoor: Any, x, y_onehot, *, batch_size: int, description: str,
                    broadcast: bool = False):
    """Run ART's ``backdoor.poison`` batch by batch with a progress bar; returns (x_poisoned, y_poisoned)."""
    import numpy as np

    n = len(x)
    x_out = np.empty_like(x)
    y_out = np.empty((n, y_onehot.shape[-1]) if not broadcast else (n, len(y_onehot)), dtype=np.float32)
    step = max(int(batch_size), 1)
    with ctx.progress(description, total=n) as advance:
        for start in range(0, n, step):
            stop = min(start + step, n)
            labels = y_onehot if broadcast else y_onehot[start:stop]
            xp, yp = backdoor.poison(x[start:stop], y=labels, broadcast=broadcast)
            x_out[start:stop] = xp
            y_out[start:stop] = yp
            advance(stop - start)
    return x_out, y_out


def _poisoned_metadata(dataset: Any, indices, **updates: Any) -> dict[str, Any]:
    """The input's metadata plus this attack's keys; earlier poisoning marks are replaced."""
    meta = copy.deepcopy(dataset.metadata)
    for key in ("poisoned_files", "poisoned_indices", "artifact"):
        meta.pop(key, None)
    meta.update(updates)
    meta["poisoned_indices"] = [int(i) for i in indices]
    meta["poisoned_files"] = []  # filled from poisoned_indices when written; present even when empty
    return meta


def _output_names(params: dict[str, Any]) -> tuple[str, str]:
    return params.get("output_tar_name") or DEFAULT_TAR, params.get("output_dataset_name") or DEFAULT_NAME


def _log_distances(ctx: Any, x_clean, x_poisoned, prefix: str = "") -> dict[str, float]:
    from gnomon.core.perturbation import distance_metrics, prefixed

    metrics = prefixed(distance_metrics(x_clean, x_poisoned), prefix)
    ctx.log_metrics(metrics)
    return metrics


def _trigger_record(params: dict[str, Any], trigger: Any = None) -> dict[str, Any]:
    """``trigger`` and ``trigger_options``: every option the trigger used (defaults included) when it says,
    so a later change of a default does not change what an old artifact claims."""
    options = getattr(trigger, "trigger_options", None)
    if not isinstance(options, dict):
        options = params.get("trigger_options") or {}
    return {"trigger": params["trigger"], "trigger_options": dict(options)}


# =======================================================================================
# gen_poison_test_data
# =======================================================================================


class PoisonTestDataSchema(TaskSchema, DatasetSource("dataset_run_id", data_dir_field="data_dir",
                                                     default_split="testing", default_tar=DEFAULT_TAR,
                                                     default_name=DEFAULT_NAME),
                           ModelArchitecture(DEFAULT_MODEL), TriggerParams, PoisonOutput):
    target_class = _target_field()
    batch_size = PositiveInt(load_default=32, metadata={"description": "Images triggered per batch."})
    poison_fraction = Fraction(load_default=1.0, metadata={
        "description": "Fraction of the dataset to trigger, 0..1 (exactly round(fraction * n) samples, "
                       "chosen with the seed)."})
    label_type = fields.String(load_default="test", validate=validate.OneOf(LABEL_TYPES), metadata={
        "description": "'test': triggered samples keep their true labels (measure attack success). "
                       "'train': they are relabelled to target_class (baseline poisoned training set)."})


def _test_data_split(params: dict[str, Any]) -> str:
    return "training" if params.get("label_type") == "train" else "testing"


def check_poison_test_data(ctx: CheckContext, params: dict[str, Any]) -> dict[str, str]:
    """Dataset source exists, target class is one of its classes, the trigger fits its images."""
    from gnomon.core.datasets.resolve import check_dataset_source

    problems = check_dataset_source(ctx)
    if problems:
        return problems
    try:
        dataset = _load(ctx, default_split=_test_data_split(params), keep=True)
    except Exception as exc:
        return _dataset_problem("data_dir" if not params.get("load_dataset_from_mlruns") else "dataset_name", exc)
    problems.update(_check_target("target_class", params["target_class"], dataset.n_classes, "dataset"))
    problems.update(_check_trigger_fits(ctx.registry, params, dataset))
    return problems


def gen_poison_test_data(ctx: Any, **params: Any) -> dict[str, Any]:
    """Trigger ``poison_fraction`` of a dataset with ART's PoisoningAttackBackdoor; write it as an artifact."""
    import numpy as np
    from art.attacks.poisoning import PoisoningAttackBackdoor

    from gnomon.core.datasets import write_dataset_artifact
    from gnomon.core.models import one_hot

    label_type, target = params["label_type"], int(params["target_class"])
    dataset = _load(ctx, default_split=_test_data_split(params))
    if target >= dataset.n_classes:
        raise ValueError(f"target_class {target} is outside the dataset's classes 0..{dataset.n_classes - 1}")
    indices = _choose(ctx, np.arange(len(dataset)), params["poison_fraction"])
    trigger = make_trigger(ctx.registry, params["trigger"], params.get("trigger_options") or {})
    backdoor = PoisoningAttackBackdoor(trigger)

    started = time.perf_counter()
    x_new, y_new = dataset.x.copy(), dataset.y.copy()
    if len(indices):
        x_sel = dataset.x[indices]
        if label_type == "train":
            labels = one_hot(np.array([target]), dataset.n_classes)[0]
            x_p, y_p = _apply_backdoor(ctx, backdoor, x_sel, labels, batch_size=params["batch_size"],
                                       description="triggering", broadcast=True)
        else:
            x_p, y_p = _apply_backdoor(ctx, backdoor, x_sel, one_hot(dataset.y[indices], dataset.n_classes),
                                       batch_size=params["batch_size"], description="triggering")
        x_new[indices] = x_p
        y_new[indices] = np.argmax(y_p, axis=1)
    else:
        ctx.info("poison_fraction gives 0 samples: the dataset is written unchanged")
    attack_s = time.perf_counter() - started

    meta = _poisoned_metadata(dataset, indices, target_class=target, label_type=label_type,
                              attack="backdoor", model_architecture=params["model_architecture"],
                              poison_fraction=float(params["poison_fraction"]), **_trigger_record(params, trigger))
    tar_name, dataset_name = _output_names(params)
    written = write_dataset_artifact(ctx, dataset.replace(x=x_new, y=y_new, metadata=meta), tar_name, dataset_name)

    ctx.log_metrics({"n_samples": len(dataset), "n_poisoned": len(indices), "target_class": target,
                     "n_relabelled": int((y_new != dataset.y).sum()), "attack_time_s": attack_s})
    _log_distances(ctx, dataset.x[indices], written.x[indices])
    ctx.info(f"triggered {len(indices)} of {len(dataset)} images ({params['trigger']}, label_type={label_type}) "
             f"-> {tar_name}#{dataset_name}")
    return {"dataset_run_id": ctx.run_id, "dataset_tar_name": tar_name, "dataset_name": dataset_name,
            "n_poisoned": len(indices)}


# =======================================================================================
# gen_poison_model (adversarial embedding)
# =======================================================================================


class PoisonModelSchema(TaskSchema, Training, ModelArchitecture(DEFAULT_MODEL),
                        DatasetSource("training_dataset_run_id", data_dir_field="data_dir_train",
                                      default_split="training", default_tar=DEFAULT_TAR,
                                      default_name=DEFAULT_NAME),
                        TriggerParams):
    register_model = Bool(load_default=True, metadata={
        "description": "Register the backdoored model in the MLflow model registry (as train does)."})
    data_dir_test = fields.String(load_default=None, allow_none=True, metadata={
        "description": "Test folder of class subfolders (default: MNIST 'testing'); the model is evaluated on it "
                       "clean and with the trigger."})
    training_split = fields.Float(load_default=1.0, validate=validate.Range(0.0, 1.0, min_inclusive=False), metadata={
        "description": "Fraction of the training set given to ART's attack (0 < split <= 1; chosen with the seed)."})
    target_class_id = _target_field()
    feature_layer_index = fields.Integer(load_default=None, allow_none=True, metadata={
        "description": "Index into the model's layers ('gnomon models show ARCH') of the feature layer the "
                       "discriminator reads; default: the layer before the output layer."})
    discriminator_layer_1_size = PositiveInt(load_default=256, metadata={
        "description": "Units of the discriminator's first dense layer."})
    discriminator_layer_2_size = PositiveInt(load_default=128, metadata={
        "description": "Units of the discriminator's second dense layer."})
    regularization_factor = PositiveFloat(load_default=0.1, metadata={
        "description": "Weight of the backdoor-recognition (discriminator) loss; positive. ART subtracts it from "
                       "the classification loss without bound, so large values (ART's default 10) cost clean "
                       "accuracy: see docs/attacks.md."})
    poison_fraction = Fraction(load_default=0.1, metadata={
        "description": "Fraction of the non-target training samples ART triggers and relabels, 0..1."})


def _feature_layer(params: dict[str, Any], n_layers: int) -> int:
    index = params.get("feature_layer_index")
    return n_layers - 2 if index is None else int(index)


def check_poison_model(ctx: CheckContext, params: dict[str, Any]) -> dict[str, str]:
    """Datasets exist and agree, target class is a class, the feature layer exists in the architecture."""
    from gnomon.core.datasets.resolve import check_dataset_source
    from gnomon.core.models import build_model

    problems = check_dataset_source(ctx)
    test_dir = params.get("data_dir_test")
    if test_dir:
        from pathlib import Path

        if not Path(str(test_dir)).expanduser().is_dir():
            problems["data_dir_test"] = f"'{test_dir}' is not a folder (expected <folder>/<class>/<images>)"
    if problems:
        return problems
    try:
        train = _load(ctx, keep=True)
    except Exception as exc:
        return _dataset_problem("data_dir_train" if not params.get("load_dataset_from_mlruns") else "dataset_name",
                                exc)
    try:
        test = _load_test_set(ctx, test_dir, keep=True)
    except Exception as exc:
        return _dataset_problem("data_dir_test", exc)
    if test.image_shape != train.image_shape:
        problems["data_dir_test"] = (f"test images are {test.image_shape} but training images are "
                                     f"{train.image_shape}; both sets must have the same shape")
    if list(test.class_names) != list(train.class_names):
        problems["data_dir_test"] = (f"test classes {test.class_names} differ from training classes "
                                     f"{train.class_names}")
    problems.update(_check_target("target_class_id", params["target_class_id"], train.n_classes, "training set"))
    problems.update(_check_trigger_fits(ctx.registry, params, train))
    if len(train) < 2:
        problems["data_dir_train"] = f"the training set has {len(train)} samples; need at least 2"
    if problems:
        return problems
    try:
        model = build_model(ctx, params["model_architecture"], train.image_shape, train.n_classes)
    except Exception as exc:
        return {"model_architecture": f"cannot build '{params['model_architecture']}' for {train.image_shape} "
                                      f"images and {train.n_classes} classes: {exc}"}
    n_layers = len(model.layers)
    index = _feature_layer(params, n_layers)
    if not 0 <= index < n_layers - 1:
        problems["feature_layer_index"] = (f"{index} is out of range for '{params['model_architecture']}': "
                                           f"its layers are 0..{n_layers - 1} and the feature layer must come "
                                           f"before the output layer {n_layers - 1} (see 'gnomon models show "
                                           f"{params['model_architecture']}')")
    return problems


def _embedding_losses(attack: Any, model: Any, params: dict[str, Any]) -> None:
    """Recompile ART's embedding model with the task's optimizer (ART hard-codes Adam), same losses and weights."""
    from gnomon.core.models import make_optimizer

    losses = {model.name: model.loss, "backdoor_detect": "binary_crossentropy"}
    weights = {model.name: 1.0, "backdoor_detect": -float(params["regularization_factor"])}
    attack.embed_model.compile(optimizer=make_optimizer(params["optimizer"], params["learning_rate"]),
                               loss=losses, loss_weights=weights, metrics=["accuracy", "accuracy"])


def gen_poison_model(ctx: Any, **params: Any) -> dict[str, Any]:
    """Train a backdoored model with ART's adversarial embedding; evaluate it clean and triggered; register it."""
    import numpy as np

    from gnomon.core.models import (
        build_model,
        compile_model,
        epochs_to_run,
        evaluate,
        log_and_register,
        one_hot,
        registered_model_name,
        total_steps,
        training_callback,
    )

    train = _load(ctx)
    test = _load_test_set(ctx, params.get("data_dir_test"))
    target = int(params["target_class_id"])
    n_classes = train.n_classes

    keep = _choose(ctx, np.arange(len(train)), params["training_split"])
    if len(keep) < 2:
        raise ValueError(f"training_split={params['training_split']} leaves {len(keep)} samples; need at least 2")
    x_train = train.x[keep] if len(keep) < len(train) else train.x
    y_train = one_hot(train.y[keep], n_classes)

    ctx.seed_tensorflow()
    from art.attacks.poisoning import PoisoningAttackAdversarialEmbedding, PoisoningAttackBackdoor
    from art.estimators.classification import KerasClassifier

    model = compile_model(build_model(ctx, params["model_architecture"], train.image_shape, n_classes),
                          params["optimizer"], params["learning_rate"])
    layer = _feature_layer(params, len(model.layers))
    trigger = make_trigger(ctx.registry, params["trigger"], params.get("trigger_options") or {})
    classifier = KerasClassifier(model, clip_values=(0.0, 1.0))
    attack = PoisoningAttackAdversarialEmbedding(
        classifier, PoisoningAttackBackdoor(trigger), feature_layer=layer,
        target=one_hot(np.array([target]), n_classes)[0], pp_poison=float(params["poison_fraction"]),
        discriminator_layer_1=params["discriminator_layer_1_size"],
        discriminator_layer_2=params["discriminator_layer_2_size"],
        regularization=float(params["regularization_factor"]), learning_rate=float(params["learning_rate"]),
        clone=False)
    _embedding_losses(attack, model, params)

    batch_size = int(params["batch_size"])
    steps = math.ceil(len(x_train) / batch_size)
    started = time.perf_counter()
    with ctx.progress("adversarial embedding", total=total_steps(params["epochs"], steps)) as advance:
        callback = training_callback(ctx, advance, epochs=params["epochs"], steps_per_epoch=steps)
        attack.poison_estimator(x_train, y_train, batch_size=batch_size, nb_epochs=epochs_to_run(params["epochs"]),
                                callbacks=[callback], verbose=0)
    train_s = time.perf_counter() - started

    x_poisoned, _, is_backdoor = attack.get_training_data()
    poisoned = np.flatnonzero(is_backdoor[:, 1] > 0.5)
    ctx.log_metrics({"n_train": len(x_train), "n_poisoned": len(poisoned), "target_class": target,
                     "feature_layer_index": layer, "attack_time_s": train_s})
    _log_distances(ctx, x_train[poisoned], x_poisoned[poisoned])
    del x_poisoned

    clean = evaluate(model, test, batch_size=max(batch_size, 256))
    ctx.log_metrics({f"test_{k}": v for k, v in clean.items() if k != "n_samples"})
    triggered = _triggered_copy(test, trigger, target, params)
    poisoned_eval = evaluate(model, triggered, batch_size=max(batch_size, 256))
    ctx.log_metrics({"triggered_accuracy": poisoned_eval["accuracy"],
                     "attack_success_rate": poisoned_eval.get("attack_success_rate", float("nan"))})
    ctx.info(f"clean accuracy {clean['accuracy']:.4f}, attack success rate "
             f"{poisoned_eval.get('attack_success_rate', float('nan')):.4f} on {len(test)} test images")

    name = registered_model_name(ctx.experiment_name, params["model_architecture"], params["model_tag"])
    outputs = log_and_register(ctx, model, name, params["register_model"],
                               architecture=params["model_architecture"], class_names=list(train.class_names))
    ctx.set_tag("gnomon.backdoor", json.dumps({"target_class": target, **_trigger_record(params, trigger)}))
    return outputs


def _triggered_copy(dataset: Any, trigger: Any, target: int, params: dict[str, Any]):
    """Every sample of ``dataset`` with the trigger applied (true labels kept), marked for ASR."""
    import numpy as np

    from gnomon.core.datasets import quantize

    x = np.empty_like(dataset.x)
    step = 1024
    for start in range(0, len(dataset), step):
        x[start:start + step] = trigger(dataset.x[start:start + step])
    meta = _poisoned_metadata(dataset, np.arange(len(dataset)), target_class=target, label_type="test",
                              **_trigger_record(params, trigger))
    return dataset.replace(x=quantize(x), metadata=meta)


# =======================================================================================
# gen_poison_clean_data (clean label)
# =======================================================================================


class PoisonCleanDataSchema(TaskSchema, DatasetSource("dataset_run_id", data_dir_field="data_dir",
                                                      default_split="training", default_tar=DEFAULT_TAR,
                                                      default_name=DEFAULT_NAME),
                            RegisteredModel, ModelArchitecture(DEFAULT_MODEL), TriggerParams, PoisonOutput):
    target_class = _target_field()
    batch_size = PositiveInt(load_default=256, metadata={
        "description": "Images per PGD batch (larger is faster on CPU, up to memory)."})
    poison_fraction = Fraction(load_default=0.33, metadata={
        "description": "Fraction of the target class's samples to poison, 0..1 (exactly round(fraction * n_target),"
                       " chosen with the seed)."})
    label_type = fields.String(load_default="train", validate=validate.OneOf(LABEL_TYPES), metadata={
        "description": "Recorded in the metadata for the seed's interface; clean-label poisons always keep their "
                       "true labels."})
    # Defaults: the budget of ART's MNIST clean-label notebook (L2, eps 5), reached in 30 steps of
    # 0.25 instead of its 200 of 0.1 (same attack success, ~7x less PGD time; docs/attacks.md).
    norm = fields.String(load_default="2", validate=validate.OneOf(NORMS), metadata={
        "description": "PGD norm: inf, 1 or 2."})
    eps = PositiveFloat(load_default=5.0, metadata={
        "description": "PGD perturbation budget (in that norm, on [0, 1] pixels; L2 5 is ~0.18 per pixel on MNIST)."})
    eps_step = PositiveFloat(load_default=0.25, metadata={"description": "PGD step size per iteration."})
    max_iter = PositiveInt(load_default=30, metadata={"description": "PGD iterations."})


def _norm_value(norm: str):
    import numpy as np

    return np.inf if norm == "inf" else int(norm)


def _proxy_shape_and_classes(services: Services, ref: str) -> tuple[tuple, int]:
    """(input shape (h, w, c), number of classes) of registered model ``ref``, from its tags or the model."""
    from gnomon.core.models import TAG_CLASS_NAMES, TAG_INPUT_SHAPE, model_version_tags

    tags = model_version_tags(services, ref)
    if TAG_INPUT_SHAPE in tags and TAG_CLASS_NAMES in tags:
        return tuple(json.loads(tags[TAG_INPUT_SHAPE])), len(json.loads(tags[TAG_CLASS_NAMES]))
    from gnomon.core.models import input_shape_of, load_registered_model, n_outputs

    model = load_registered_model(services, ref)
    return input_shape_of(model), n_outputs(model)


def check_poison_clean_data(ctx: CheckContext, params: dict[str, Any]) -> dict[str, str]:
    """Proxy model exists and takes these images; target class is one of its classes and has samples."""
    from gnomon.core.datasets.resolve import check_dataset_source
    from gnomon.core.models import check_model

    problems = check_dataset_source(ctx)
    problems.update(check_model(ctx, params, architecture_field=None))
    if problems:
        return problems
    try:
        shape, n_model_classes = _proxy_shape_and_classes(ctx, params["model"])
    except Exception as exc:
        return {"model": f"cannot read registered model '{params['model']}': {type(exc).__name__}: {exc}"}
    try:
        dataset = _load(ctx, keep=True)
    except Exception as exc:
        return _dataset_problem("data_dir" if not params.get("load_dataset_from_mlruns") else "dataset_name", exc)
    target = int(params["target_class"])
    problems.update(_check_target("target_class", target, n_model_classes, f"proxy model '{params['model']}'"))
    if not problems:
        problems.update(_check_target("target_class", target, dataset.n_classes, "dataset"))
    if dataset.n_classes > n_model_classes:
        problems["model"] = (f"the dataset has {dataset.n_classes} classes but proxy model '{params['model']}' "
                             f"predicts {n_model_classes}")
    if any(s is not None and s != d for s, d in zip(shape, dataset.image_shape, strict=False)):
        where = "dataset_name" if params.get("load_dataset_from_mlruns") else "data_dir"
        problems[where] = (f"dataset images are {dataset.image_shape} but proxy model '{params['model']}' takes "
                           f"{tuple(shape)}; use data of the model's shape")
    if not problems and params["poison_fraction"] > 0 and not (dataset.y == target).any():
        problems["target_class"] = f"the dataset has no samples of class {target} to poison"
    problems.update(_check_trigger_fits(ctx.registry, params, dataset))
    return problems


def _proxy_classifier(model: Any):
    """ART KerasClassifier over a registered Keras model (compiled with cross-entropy if it is not)."""
    from art.estimators.classification import KerasClassifier

    if not isinstance(getattr(model, "loss", None), str):
        model.compile(loss="categorical_crossentropy")
    return KerasClassifier(model, clip_values=(0.0, 1.0))


def gen_poison_clean_data(ctx: Any, **params: Any) -> dict[str, Any]:
    """Clean-label poisons with ART's PoisoningAttackCleanLabelBackdoor: PGD on a proxy model, then the trigger."""
    import numpy as np
    from art.attacks.poisoning import PoisoningAttackBackdoor, PoisoningAttackCleanLabelBackdoor

    from gnomon.core.datasets import write_dataset_artifact
    from gnomon.core.models import load_registered_model, one_hot, resolve_model_ref

    dataset = _load(ctx)
    target = int(params["target_class"])
    ctx.seed_tensorflow()
    name, version = resolve_model_ref(ctx, params["model"])
    proxy = _proxy_classifier(load_registered_model(ctx, f"{name}/{version}"))
    n_classes = proxy.nb_classes
    trigger = make_trigger(ctx.registry, params["trigger"], params.get("trigger_options") or {})
    target_onehot = one_hot(np.array([target]), n_classes)[0]
    attack = PoisoningAttackCleanLabelBackdoor(
        backdoor=PoisoningAttackBackdoor(trigger), proxy_classifier=proxy, target=target_onehot,
        pp_poison=min(max(float(params["poison_fraction"]), 1e-6), 1 - 1e-6), norm=_norm_value(params["norm"]),
        eps=float(params["eps"]), eps_step=float(params["eps_step"]), max_iter=int(params["max_iter"]))
    batch_size = int(params["batch_size"])
    attack.attack.set_params(batch_size=batch_size, verbose=False)

    # ART's poison() draws its indices from the global NumPy state *with replacement* (fewer distinct
    # poisons than asked) and copies the whole dataset; select exactly round(fraction * n_target)
    # target-class samples with the run's seed instead, then run the attack's own PGD and backdoor.
    indices = _choose(ctx, np.flatnonzero(dataset.y == target), params["poison_fraction"])
    x_sel = dataset.x[indices]
    started = time.perf_counter()
    x_adv = np.empty_like(x_sel)
    labels = one_hot(dataset.y[indices], n_classes)
    with ctx.progress(f"PGD ({params['norm']}, eps={params['eps']}, {params['max_iter']} iter)",
                      total=len(indices)) as advance:
        for start in range(0, len(indices), batch_size):
            stop = min(start + batch_size, len(indices))
            x_adv[start:stop] = attack.attack.generate(x_sel[start:stop], y=labels[start:stop])
            advance(stop - start)
    pgd_s = time.perf_counter() - started
    if len(indices):
        x_poison, _ = attack.backdoor.poison(x_adv, y=target_onehot, broadcast=True)
    else:
        x_poison = x_adv
        ctx.info("poison_fraction gives 0 samples: the dataset is written unchanged")
    attack_s = time.perf_counter() - started

    x_new = dataset.x.copy()
    x_new[indices] = x_poison
    meta = _poisoned_metadata(
        dataset, indices, target_class=target, label_type=params["label_type"], attack="clean_label",
        proxy_model=f"{name}/{version}", model_architecture=params["model_architecture"],
        pgd={"norm": params["norm"], "eps": params["eps"], "eps_step": params["eps_step"],
             "max_iter": params["max_iter"]},
        poison_fraction=float(params["poison_fraction"]), **_trigger_record(params, trigger))
    tar_name, dataset_name = _output_names(params)
    written = write_dataset_artifact(ctx, dataset.replace(x=x_new, metadata=meta), tar_name, dataset_name)

    n_target = int((dataset.y == target).sum())
    ctx.log_metrics({"n_samples": len(dataset), "n_target_samples": n_target, "n_poisoned": len(indices),
                     "target_class": target, "pgd_time_s": pgd_s, "attack_time_s": attack_s})
    if len(indices):
        proxy_pred = np.argmax(proxy.predict(x_adv, batch_size=max(batch_size, 256)), axis=1)
        ctx.log_metric("pgd_proxy_misclassified", float(np.mean(proxy_pred != target)))
    _log_distances(ctx, x_sel, x_adv, prefix="pgd_")
    _log_distances(ctx, dataset.x[indices], written.x[indices])
    ctx.info(f"poisoned {len(indices)} of {n_target} class-{target} images (PGD {params['norm']} "
             f"eps={params['eps']}, then {params['trigger']}) -> {tar_name}#{dataset_name}")
    return {"dataset_run_id": ctx.run_id, "dataset_tar_name": tar_name, "dataset_name": dataset_name,
            "n_poisoned": len(indices)}


# -- registration -----------------------------------------------------------------------


@hookimpl
def register_tasks(register) -> None:
    """Register gen_poison_test_data, gen_poison_model and gen_poison_clean_data."""
    register(Task(
        name="gen_poison_test_data", category="attack", schema=PoisonTestDataSchema, fn=gen_poison_test_data,
        check=check_poison_test_data,
        summary="Backdoor a fraction of a dataset with a trigger (ART PoisoningAttackBackdoor); "
                "label_type=train relabels to the target.",
        description="Writes a dataset artifact recording target_class, trigger, label_type and poisoned_files; "
                    "infer on it reports the attack success rate. Also builds the baseline attack's poisoned "
                    "training set (label_type=train, data_dir=<training folder>)."))
    register(Task(
        name="gen_poison_model", category="attack", schema=PoisonModelSchema, fn=gen_poison_model,
        check=check_poison_model,
        summary="Train a backdoored model by adversarial embedding (ART PoisoningAttackAdversarialEmbedding).",
        description="Trains with a secondary discriminator on feature_layer_index so triggered and clean "
                    "samples look alike inside the model; evaluates clean accuracy and attack success rate on "
                    "the test set and registers the model like train."))
    register(Task(
        name="gen_poison_clean_data", category="attack", schema=PoisonCleanDataSchema, fn=gen_poison_clean_data,
        check=check_poison_clean_data,
        summary="Clean-label backdoor poisons from a proxy model (ART PoisoningAttackCleanLabelBackdoor).",
        description="PGD under eps against the registered proxy model, then the trigger, on poison_fraction of "
                    "the target class; labels are unchanged. Writes a dataset artifact to train on."))


__all__ = ["register_tasks", "gen_poison_test_data", "gen_poison_model", "gen_poison_clean_data"]
