"""Builtin part: the seed's image preprocessing defense tasks.

``spatial_smoothing``, ``jpeg_compression`` and ``gaussian_augmentation`` each read a dataset
(a folder, or another run's dataset artifact), apply the ART preprocessor registered under the
same name (see :mod:`gnomon.plugins.builtin.defenses`), write the defended dataset as the
artifact ``<task>_dataset.tar.gz`` (folder ``adv_testing``, as Dioptra named it) keeping the
source's metadata (``target_class``, ``poisoned_files``, ...) plus a ``defenses`` entry, and
evaluate the registered ``model`` on it: accuracy and friends, and the attack success rate when
the data carries a trigger. Without ``model`` the task only writes the defended set: a workflow
then evaluates models on it with ``infer``, so the transform (which depends on the data and the
seed, not on any model) is shared by every model and every sweep combination that uses the data.

As in Dioptra, the defense is applied to every image of the dataset by calling the ART
preprocessor; the ``*_apply_fit`` / ``*_apply_predict`` flags are handed to ART unchanged and
recorded with the dataset. Combinations ART refuses or that would never apply the defense are
rejected by parameter validation, before any run exists.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError, fields, validate, validates_schema

from gnomon.core.fields import Bool, ModelRef, PositiveFloat, PositiveInt
from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import BatchSize, DatasetSource, ModelArchitecture, RegisteredModel, TaskSchema
from gnomon.core.tasks import Task

if TYPE_CHECKING:
    from gnomon.core.context import CheckContext

from .conventions import DEFAULT_MODEL
from .defenses import flag_problems

#: Dataset artifact written by each defense task: ``<task>_dataset.tar.gz`` holding this folder.
OUTPUT_DATASET_NAME = "adv_testing"
#: What the defense tasks read by default from another run (the seed's poisoned test data).
DEFAULT_TAR = "adversarial_poison.tar.gz"
DEFAULT_NAME = "adv_poison_data"


def output_tar_name(defense: str) -> str:
    """The artifact a defense task writes, e.g. ``spatial_smoothing_dataset.tar.gz``."""
    return f"{defense}_dataset.tar.gz"


# -- schemas ------------------------------------------------------------------
class _DefenseSchema(TaskSchema, DatasetSource("dataset_run_id", default_tar=DEFAULT_TAR, default_name=DEFAULT_NAME),
                     RegisteredModel, ModelArchitecture(DEFAULT_MODEL), BatchSize):
    """Parameters every defense task takes (dataset source, model, batch size, seed)."""

    model = ModelRef(load_default=None, metadata={
        "description": "Registered model to evaluate on the defended data: 'name' (latest version) or "
                       "'name/version'. Without it the task only writes the defended dataset (evaluate "
                       "models on it with 'infer'), so the transform can be shared by several models."})
    batch_size = PositiveInt(load_default=32, metadata={
        "description": "Images per batch when evaluating the model; also the smallest chunk the defense "
                       "is applied to at a time."})


def _flag(default: bool, text: str) -> Bool:
    return Bool(load_default=default, metadata={"description": text})


_FIT = "Pass apply_fit=true to ART: the preprocessor is meant for training inputs."
_PREDICT = "Pass apply_predict=true to ART: the preprocessor is meant for prediction inputs."


def _validate_flags(prefix: str, data: dict[str, Any], augmentation: bool = False) -> None:
    problems = flag_problems(bool(data.get(f"{prefix}apply_fit")), bool(data.get(f"{prefix}apply_predict")),
                             augmentation=augmentation, prefix=prefix)
    if problems:
        raise ValidationError(problems)


class SpatialSmoothingSchema(_DefenseSchema):
    spatial_smoothing_window_size = PositiveInt(load_default=3, metadata={
        "description": "Side of the square median-filter window, in pixels (positive integer)."})
    spatial_smoothing_apply_fit = _flag(False, _FIT)
    spatial_smoothing_apply_predict = _flag(True, _PREDICT)

    @validates_schema
    def _flags(self, data, **kwargs):
        _validate_flags("spatial_smoothing_", data)


class JpegCompressionSchema(_DefenseSchema):
    jpeg_compression_channels_first = _flag(False, (
        "Hand the images to ART channels-first (NCHW) instead of channels-last (NHWC); gnomon transposes "
        "its NHWC data to match, so both give the same images."))
    jpeg_compression_quality = fields.Integer(load_default=50, strict=False, validate=validate.Range(1, 100), metadata={
        "description": "JPEG quality from 1 (worst) to 100 (best); values above 95 are not recommended."})
    jpeg_compression_apply_fit = _flag(False, _FIT)
    jpeg_compression_apply_predict = _flag(True, _PREDICT)

    @validates_schema
    def _flags(self, data, **kwargs):
        _validate_flags("jpeg_compression_", data)


class GaussianAugmentationSchema(_DefenseSchema):
    gaussian_augmentation_perform_data_augmentation = _flag(False, (
        "Keep the original images and append noisy copies (ART augmentation=True; training data only, "
        "needs apply_fit=true and apply_predict=false). If false, every image is replaced by a noisy copy."))
    gaussian_augmentation_ratio = PositiveFloat(load_default=1.0, metadata={
        "description": "With data augmentation: noisy copies to add, as a fraction of the dataset "
                       "(1.0 doubles it). Ignored otherwise."})
    gaussian_augmentation_sigma = fields.Float(load_default=1.0, validate=validate.Range(min=0.0), metadata={
        "description": "Standard deviation of the Gaussian noise, in pixel units of [0, 1] data; results are "
                       "clipped to the data's range."})
    gaussian_augmentation_apply_fit = _flag(False, _FIT)
    gaussian_augmentation_apply_predict = _flag(True, _PREDICT)

    @validates_schema
    def _flags(self, data, **kwargs):
        _validate_flags("gaussian_augmentation_", data,
                        augmentation=bool(data.get("gaussian_augmentation_perform_data_augmentation")))


# -- the ART options each task hands to its factory ---------------------------
def _spatial_options(p: dict[str, Any], clip_values) -> dict[str, Any]:
    return {"window_size": int(p["spatial_smoothing_window_size"]), "apply_fit": p["spatial_smoothing_apply_fit"],
            "apply_predict": p["spatial_smoothing_apply_predict"], "clip_values": clip_values}


def _jpeg_options(p: dict[str, Any], clip_values) -> dict[str, Any]:
    return {"quality": int(p["jpeg_compression_quality"]), "channels_first": p["jpeg_compression_channels_first"],
            "apply_fit": p["jpeg_compression_apply_fit"], "apply_predict": p["jpeg_compression_apply_predict"],
            "clip_values": clip_values}


def _gaussian_options(p: dict[str, Any], clip_values) -> dict[str, Any]:
    return {"sigma": float(p["gaussian_augmentation_sigma"]),
            "augmentation": p["gaussian_augmentation_perform_data_augmentation"],
            "ratio": float(p["gaussian_augmentation_ratio"]), "apply_fit": p["gaussian_augmentation_apply_fit"],
            "apply_predict": p["gaussian_augmentation_apply_predict"], "clip_values": clip_values}


OPTIONS = {"spatial_smoothing": _spatial_options, "jpeg_compression": _jpeg_options,
           "gaussian_augmentation": _gaussian_options}


# -- applying a preprocessor --------------------------------------------------
def _chunk_size(n: int, batch_size: int) -> int:
    return max(batch_size, -(-n // 50), 1)


def apply_preprocessor(ctx, preprocessor, x, *, batch_size: int, channels_first: bool = False, description: str):
    """``preprocessor(x)[0]`` in chunks with a progress bar (NHWC in and out).

    ``channels_first`` transposes to NCHW for ART and back. Augmenting preprocessors (whose
    output has more samples than their input) must be called on the whole array instead.
    """
    import numpy as np

    n = len(x)
    out = np.empty_like(x)
    step = _chunk_size(n, batch_size)
    with ctx.progress(description, total=n) as advance:
        for start in range(0, n, step):
            chunk = x[start:start + step]
            if channels_first:
                chunk = np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))
            done, _ = preprocessor(chunk)
            if channels_first:
                done = done.transpose(0, 2, 3, 1)
            if done.shape != x[start:start + step].shape:
                raise RuntimeError(f"{description}: the preprocessor returned shape {done.shape} for input "
                                   f"{x[start:start + step].shape}")
            out[start:start + len(done)] = done
            advance(len(done))
    return out


def augment(ctx, preprocessor, dataset):
    """Gaussian augmentation with ``augmentation=True``: the originals plus the noisy copies ART appends.

    ART draws the copied indices from NumPy's global generator; they are read back from the same
    generator state so each copy gets a file name (``<class>/<stem>_gauss<k>.png``) and copies of
    triggered images stay marked as triggered. Returns ``(augmented, sources)``: ``sources[i]`` is
    the index in ``dataset`` that sample ``i`` was made from.
    """
    import numpy as np

    n = len(dataset)
    state = np.random.get_state()
    indices = np.random.randint(0, n, size=int(n * preprocessor.ratio))
    np.random.set_state(state)
    with ctx.progress("gaussian_augmentation", total=n) as advance:
        x_aug, y_aug = preprocessor(dataset.x, dataset.y)
        advance(n)
    if len(x_aug) != n + len(indices) or not np.array_equal(y_aug[n:], dataset.y[indices]):
        raise RuntimeError("gaussian_augmentation: could not match ART's augmented samples to their sources")
    files = dataset.files if dataset.files is not None else [f"{dataset.class_names[c]}/{i}.png"
                                                             for i, c in enumerate(dataset.y)]
    new_files = [f"{files[i].rsplit('.', 1)[0]}_gauss{k}.png" for k, i in enumerate(indices)]
    mask = dataset.poisoned_mask()
    metadata = dict(dataset.metadata)
    all_files = list(files) + new_files
    all_mask = np.concatenate([mask, mask[indices]])
    metadata.pop("poisoned_indices", None)
    if all_mask.any() or "poisoned_files" in metadata:
        metadata["poisoned_files"] = [f for f, m in zip(all_files, all_mask, strict=True) if m]
    augmented = dataset.replace(x=x_aug, y=np.asarray(y_aug, dtype=np.int64), files=all_files, metadata=metadata)
    return augmented, np.concatenate([np.arange(n), indices])


def defend(ctx, name: str, dataset, params: dict[str, Any]):
    """Apply the registered preprocessor ``name`` configured from the task's ``params`` to ``dataset``.

    Returns ``(defended_dataset, sources)`` (``sources[i]``: index in ``dataset`` of the image
    defended sample ``i`` was made from); the dataset's metadata gains ``defense`` and a
    ``defenses`` entry, everything else (target class, trigger, poisoned files) is kept.
    """
    import numpy as np

    from .defenses import clip_values_for

    clip_values = clip_values_for(dataset.x)
    options = OPTIONS[name](params, clip_values)
    spec = ctx.registry.get("defense", name)
    preprocessor = spec.factory(**options)
    if options.get("augmentation"):
        defended, sources = augment(ctx, preprocessor, dataset)
    else:
        x = apply_preprocessor(ctx, preprocessor, dataset.x, batch_size=int(params["batch_size"]),
                               channels_first=bool(options.get("channels_first")), description=name)
        defended, sources = dataset.replace(x=x), np.arange(len(dataset))
    entry = {"name": name, "art_class": type(preprocessor).__name__, "run_id": ctx.run_id,
             "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}}
    defended.metadata["defense"] = name
    defended.metadata["defenses"] = list(dataset.metadata.get("defenses") or []) + [entry]
    return defended, sources


# -- the tasks ----------------------------------------------------------------
def _check(ctx: CheckContext, params: dict[str, Any]) -> dict[str, str]:
    from gnomon.core.datasets import check_dataset_source
    from gnomon.core.models import check_model

    problems = dict(check_dataset_source(ctx))
    if params.get("model") is not None:
        # model_architecture defaults to le_net here, so a mismatch is only noted at run time
        problems.update(check_model(ctx, params, architecture_field=None))
    return problems


def run_defense(ctx, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Body of every defense task: read, defend, evaluate (with a ``model``), write the artifact; log metrics
    and timings."""
    from gnomon.core.datasets import quantize, resolve_dataset, write_dataset_artifact
    from gnomon.core.models import evaluate, load_registered_model, recorded_architecture
    from gnomon.core.perturbation import distance_metrics

    timings: dict[str, float] = {}
    t = time.perf_counter()
    dataset = resolve_dataset(ctx)
    timings["time_load_s"] = time.perf_counter() - t
    ctx.info(f"read {len(dataset)} images {dataset.image_shape} in {len(dataset.class_names)} classes")

    model = None
    if params.get("model") is not None:
        t = time.perf_counter()
        model = load_registered_model(ctx, params["model"])
        tagged = recorded_architecture(ctx, params["model"])
        if tagged and tagged != params["model_architecture"]:
            ctx.info(f"note: model '{params['model']}' was built as '{tagged}', not '{params['model_architecture']}'")
        timings["time_model_load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    defended, sources = defend(ctx, name, dataset, params)
    timings["time_defense_s"] = time.perf_counter() - t

    # Everything downstream sees exactly what the artifact stores (8-bit values).
    defended = defended.replace(x=quantize(defended.x))
    same_order = len(defended) == len(dataset)
    perturbation = distance_metrics(dataset.x if same_order else dataset.x[sources], defended.x)

    metrics: dict[str, float] = {}
    if model is not None:
        t = time.perf_counter()
        metrics = evaluate(model, defended, batch_size=int(params["batch_size"]))
        timings["time_evaluate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tar_name = output_tar_name(name)
    write_dataset_artifact(ctx, defended, tar_name, OUTPUT_DATASET_NAME)
    timings["time_write_artifact_s"] = time.perf_counter() - t

    ctx.log_metrics(metrics)
    ctx.log_metrics(perturbation)
    ctx.log_metrics({"n_defended": float(len(defended)), **timings})
    shown = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("accuracy", "attack_success_rate") if k in metrics)
    ctx.info(f"{name}: {shown or 'no model evaluated'}; dataset artifact {tar_name} (folder {OUTPUT_DATASET_NAME})")
    return {"dataset_run_id": ctx.run_id, "dataset_tar_name": tar_name, "dataset_name": OUTPUT_DATASET_NAME}


def _task_fn(name: str):
    def fn(ctx, **params):
        return run_defense(ctx, name, params)

    fn.__name__ = name
    fn.__doc__ = f"Apply {name} to a dataset, log the defended dataset and evaluate the model (if given) on it."
    return fn


_TASKS = (
    ("spatial_smoothing", SpatialSmoothingSchema, "Median-filter each image (ART SpatialSmoothing), then evaluate."),
    ("jpeg_compression", JpegCompressionSchema, "JPEG-compress each image (ART JpegCompression), then evaluate."),
    ("gaussian_augmentation", GaussianAugmentationSchema,
     "Add Gaussian noise to each image (ART GaussianAugmentation), then evaluate."),
)

_DESCRIPTION = (
    "Reads the dataset from data_dir (default: MNIST testing) or, with load_dataset_from_mlruns=true, from "
    "dataset_tar_name/dataset_name of run dataset_run_id (e.g. the poisoned test data of gen_poison_test_data). "
    "Writes the defended dataset as the artifact {tar} (folder " + OUTPUT_DATASET_NAME + "), keeping the source "
    "metadata (target class, triggered files) and adding this defense to its 'defenses' list; with a model, logs its "
    "loss, accuracy, precision, recall, auc and, for triggered data, attack_success_rate, plus the L2/L-inf "
    "size of the change (l2_mean, l2_max, linf_mean, linf_max)."
)


@hookimpl
def register_tasks(register):
    """Register the three defense tasks."""
    for name, schema, summary in _TASKS:
        register(Task(name=name, summary=summary, schema=schema, fn=_task_fn(name), category="defense",
                      check=_check, description=_DESCRIPTION.format(tar=output_tar_name(name))))
