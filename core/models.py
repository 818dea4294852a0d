"""Model helpers shared by every task: build, compile, train progress, log/register, load, evaluate.

Contract (docs/architecture.md, "Models"): architectures are :class:`~gnomon.core.registry.ModelSpec`
entries whose ``build(input_shape, n_classes)`` returns an uncompiled Keras model taking NHWC
images in [0, 1]. Registered models are named ``{EXPERIMENT}_{model_tag}_{model_architecture}``
(or ``{EXPERIMENT}_{model_architecture}``) and referred to as ``name`` (latest version) or
``name/version``.

Nothing here imports tensorflow, keras or mlflow at module import time.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import GnomonError

#: Metric names (as logged) produced by :func:`compile_model` and :func:`evaluate`.
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "auc")

#: Tags set on every registered model version.
TAG_ARCHITECTURE = "gnomon.model_architecture"
TAG_CLASS_NAMES = "gnomon.class_names"
TAG_INPUT_SHAPE = "gnomon.input_shape"


class ModelNotFoundError(GnomonError):
    """A registered model (or one of its versions) does not exist."""

    exit_code = 2


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ start-up chatter (CUDA probing, graph notes) unless asked for.

    Only effective before TensorFlow is imported; an explicit ``TF_CPP_MIN_LOG_LEVEL`` of 0 or 1
    is respected.
    """
    import os
    import sys

    if "tensorflow" not in sys.modules and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("", "2"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


# -- building ---------------------------------------------------------------
def build_model(engine, architecture: str, input_shape, n_classes: int):
    """Build the registered architecture ``architecture`` for ``input_shape`` (h, w, c) and ``n_classes``."""
    spec = engine.registry.get("model", architecture)
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise GnomonError(f"model '{architecture}': input_shape must be (height, width, channels), got {shape}")
    if int(n_classes) < 2:
        raise GnomonError(f"model '{architecture}': need at least 2 classes, got {n_classes}")
    return spec.build(shape, int(n_classes))


def make_optimizer(name: str, learning_rate: float):
    """A Keras optimizer by Dioptra's names: rmsprop, adam, adagrad, sgd."""
    import keras

    table = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "adagrad": keras.optimizers.Adagrad,
        "sgd": keras.optimizers.SGD,
    }
    try:
        cls = table[name.lower()]
    except KeyError:
        raise GnomonError(f"optimizer '{name}': expected one of {', '.join(table)}") from None
    return cls(learning_rate=float(learning_rate))


def keras_metrics() -> list:
    """Dioptra's training metrics: accuracy, precision, recall and AUC (names as logged)."""
    import keras

    return [
        keras.metrics.CategoricalAccuracy(name="accuracy"),
        keras.metrics.Precision(name="precision"),
        keras.metrics.Recall(name="recall"),
        keras.metrics.AUC(name="auc"),
    ]


def compile_model(model, optimizer: str = "adam", learning_rate: float = 0.001):
    """Compile ``model`` for one-hot labels with categorical cross-entropy and :func:`keras_metrics`."""
    model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss="categorical_crossentropy",
                  metrics=keras_metrics())
    return model


def n_outputs(model) -> int:
    """Number of classes the model predicts (size of its last output axis)."""
    return int(model.outputs[0].shape[-1])


def input_shape_of(model) -> tuple[int | None, int | None, int | None]:
    """The model's (height, width, channels) input shape (entries may be None)."""
    shape = model.inputs[0].shape
    return tuple(None if v is None else int(v) for v in shape[1:])


def one_hot(y, n_classes: int):
    """int class indices -> float32 one-hot array."""
    import numpy as np

    y = np.asarray(y, dtype=np.int64)
    out = np.zeros((len(y), n_classes), dtype=np.float32)
    out[np.arange(len(y)), y] = 1.0
    return out


def fit_to_model(x, model):
    """Convert images ``x`` (NHWC, [0, 1]) to the model's input channels and size, if they differ.

    Grayscale is replicated to RGB, RGB is averaged to grayscale, and images are resized
    bilinearly. Returns ``x`` itself (no copy) when it already fits.
    """
    import numpy as np

    h, w, c = input_shape_of(model)
    if c is not None and x.shape[-1] != c:
        if x.shape[-1] == 1 and c == 3:
            x = np.repeat(x, 3, axis=-1)
        elif x.shape[-1] == 3 and c == 1:
            x = x.mean(axis=-1, keepdims=True, dtype=np.float32)
        else:
            raise GnomonError(f"images have {x.shape[-1]} channels but the model expects {c}")
    if (h is not None and x.shape[1] != h) or (w is not None and x.shape[2] != w):
        import tensorflow as tf

        x = tf.image.resize(x, (h or x.shape[1], w or x.shape[2])).numpy().astype(np.float32)
    return x


def layer_table(model) -> list[dict[str, Any]]:
    """One row per entry of ``model.layers`` (the index attacks call ``feature_layer_index``)."""
    rows = []
    for i, layer in enumerate(model.layers):
        try:
            shape = layer.output.shape
            shape = tuple(None if v is None else int(v) for v in shape)
        except Exception:  # pragma: no cover - layers without a single output
            shape = None
        rows.append({"index": i, "name": layer.name, "type": type(layer).__name__,
                     "output_shape": shape, "params": int(layer.count_params())})
    return rows


# -- training ---------------------------------------------------------------
def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Batches a run of ``epochs`` (possibly fractional) takes: the progress bar's total."""
    n_epochs, last_steps = _epoch_plan(epochs, steps_per_epoch)
    return (n_epochs - 1) * steps_per_epoch + last_steps


def _epoch_plan(epochs: float, steps_per_epoch: int) -> tuple[int, int]:
    import math

    full = int(math.floor(float(epochs) + 1e-9))
    frac = float(epochs) - full
    if frac > 1e-9:
        return full + 1, min(steps_per_epoch, max(1, int(round(frac * steps_per_epoch))))
    return max(full, 1), steps_per_epoch


def training_callback(ctx, advance, *, epochs: float, steps_per_epoch: int, log_prefix: str = ""):
    """A Keras callback: advances a rich bar per batch, logs per-epoch curves, honours fractional epochs.

    Use it inside ``with ctx.progress("training", total=total_steps(...)) as advance``.
    ``epochs`` may be fractional: the last epoch stops after ``round(frac * steps_per_epoch)``
    batches (at least one). Per-epoch metrics are logged as ``{log_prefix}train_<metric>`` and
    ``{log_prefix}val_<metric>`` with ``step`` = epoch number (1-based), plus the epoch's wall
    time (training and validation) as ``{log_prefix}epoch_time_s`` and the process CPU time it
    took as ``{log_prefix}epoch_cpu_time_s`` (robust to other load on the machine).
    """
    import time

    import keras

    n_epochs, last_steps = _epoch_plan(epochs, steps_per_epoch)

    class _GnomonTraining(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self._epoch = 0
            self.steps = 0
            self._epoch_started = time.perf_counter()
            self._epoch_cpu = time.process_time()
            self.epochs_logged: list[int] = []
            self.epoch_times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch
            self._epoch_started = time.perf_counter()
            self._epoch_cpu = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            advance(1)
            if self._epoch >= n_epochs - 1 and batch + 1 >= last_steps:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self._epoch_started
            cpu_seconds = time.process_time() - self._epoch_cpu
            self.epochs_logged.append(epoch + 1)
            self.epoch_times.append(seconds)
            if not logs or not ctx.run_id:
                return
            metrics = {f"{log_prefix}epoch_time_s": seconds, f"{log_prefix}epoch_cpu_time_s": cpu_seconds}
            for key, value in logs.items():
                if key == "learning_rate":
                    continue
                val = key.startswith("val_")
                metrics[f"{log_prefix}{'val' if val else 'train'}_{key[4:] if val else key}"] = float(value)
            ctx.log_metrics(metrics, step=epoch + 1)

    return _GnomonTraining()


def epochs_to_run(epochs: float) -> int:
    """How many (possibly partial) epochs Keras must be told to run for a float ``epochs``."""
    import math

    return max(1, int(math.ceil(float(epochs) - 1e-9)))


def early_stopping(patience: int, *, monitor: str, min_delta: float = 0.0):
    """A Keras EarlyStopping callback restoring the best weights, or ``None`` when ``patience`` is 0."""
    if not patience:
        return None
    import keras

    return keras.callbacks.EarlyStopping(monitor=monitor, patience=int(patience), min_delta=float(min_delta),
                                         restore_best_weights=True, verbose=0)


# -- evaluation -------------------------------------------------------------
_PREDICTIONS = None  # weakref.WeakKeyDictionary: model -> LRU(fingerprint -> probabilities)
_PREDICTIONS_PER_MODEL = 8


def _prediction_key(model, x, batch_size: int) -> str:
    """sha256 of the model's weights, the input bytes, shape and dtype, and the batch size.

    Content, not identity: a model trained further or an array changed in place gets a new key,
    so a remembered prediction is only ever reused for exactly the same computation.
    """
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).data)
    arr = np.ascontiguousarray(x)
    h.update(repr((arr.shape, str(arr.dtype), int(batch_size))).encode())
    h.update(arr.data)
    return h.hexdigest()


def predict(model, x, batch_size: int = 256, ctx=None):
    """Class probabilities for ``x`` (NHWC float32), in batches; with ``ctx``, a rich progress bar.

    The same model (same weights) on the same images (same bytes) is predicted once per
    process: a workflow's ``train`` step and a later ``infer`` of that model on the clean test
    set share the forward pass. ``GNOMON_MODEL_MEMO=0`` turns this off with the model memo.
    Callers get their own copy of the probabilities.
    """
    import weakref

    import numpy as np

    from .memo import LRU

    global _PREDICTIONS
    memo = None
    if _model_memo_capacity() > 0:
        if _PREDICTIONS is None:
            _PREDICTIONS = weakref.WeakKeyDictionary()
        key = _prediction_key(model, x, batch_size)
        memo = _PREDICTIONS.setdefault(model, LRU(lambda: _PREDICTIONS_PER_MODEL))
        remembered = memo.get(key)
        if remembered is not None:
            return remembered.copy()
    if ctx is None:
        probs = np.asarray(model.predict(x, batch_size=int(batch_size), verbose=0), dtype=np.float32)
    else:
        import keras

        with ctx.progress("predicting", total=-(-len(x) // int(batch_size))) as advance:
            class _Advance(keras.callbacks.Callback):
                def on_predict_batch_end(self, batch, logs=None):
                    advance(1)

            probs = np.asarray(model.predict(x, batch_size=int(batch_size), verbose=0, callbacks=[_Advance()]),
                               dtype=np.float32)
    if memo is not None:
        memo.put(key, probs.copy())
    return probs


def metrics_from_probs(probs, y, n_classes: int | None = None) -> dict[str, float]:
    """loss (categorical cross-entropy), accuracy, precision, recall, AUC as Keras computes them."""
    import keras
    import numpy as np

    n_classes = n_classes or probs.shape[-1]
    y_true = one_hot(y, n_classes)
    out = {}
    loss = keras.losses.CategoricalCrossentropy()
    out["loss"] = float(loss(y_true, probs))
    out["accuracy"] = float(np.mean(np.argmax(probs, axis=-1) == np.asarray(y)))
    for metric in keras_metrics()[1:]:
        metric.update_state(y_true, probs)
        out[metric.name] = float(metric.result())
    return out


def attack_success_rate(preds, y, triggered, target_class: int) -> float | None:
    """Among triggered samples whose true class is not ``target_class``, the fraction predicted as it."""
    import numpy as np

    mask = np.asarray(triggered, dtype=bool) & (np.asarray(y) != int(target_class))
    if not mask.any():
        return None
    return float(np.mean(np.asarray(preds)[mask] == int(target_class)))


def evaluate(model, dataset, batch_size: int = 256, ctx=None) -> dict[str, float]:
    """Evaluate ``model`` on an :class:`~gnomon.core.datasets.ImageDataset`.

    Returns loss, accuracy, precision, recall and auc; when the dataset's metadata names a
    ``target_class`` and marks triggered samples (``poisoned_files``), also
    ``attack_success_rate`` (see :func:`attack_success_rate`), ``n_triggered`` and
    ``accuracy_clean`` (accuracy on the samples without a trigger).
    Images are converted to the model's input size and channels if needed. With ``ctx`` (a
    RunContext), prediction shows a progress bar.
    """
    import numpy as np

    n = n_outputs(model)
    y = np.asarray(dataset.y)
    if len(y) == 0:
        raise GnomonError("cannot evaluate on an empty dataset")
    if int(y.max()) >= n:
        raise GnomonError(f"dataset has class index {int(y.max())} but the model predicts only {n} classes")
    probs = predict(model, fit_to_model(dataset.x, model), batch_size, ctx=ctx)
    out = metrics_from_probs(probs, y, n)
    out["n_samples"] = float(len(y))
    metadata = getattr(dataset, "metadata", None) or {}
    target = metadata.get("target_class")
    if target is not None and hasattr(dataset, "poisoned_mask"):
        mask = np.asarray(dataset.poisoned_mask(), dtype=bool)
        if mask.any():
            preds = np.argmax(probs, axis=-1)
            asr = attack_success_rate(preds, y, mask, int(target))
            out["n_triggered"] = float(mask.sum())
            if asr is not None:
                out["attack_success_rate"] = asr
            if (~mask).any():
                out["accuracy_clean"] = float(np.mean(preds[~mask] == y[~mask]))
    return out


# -- registry ---------------------------------------------------------------
def registered_model_name(experiment: str, architecture: str, model_tag: str | None = "") -> str:
    """``{experiment}_{model_tag}_{architecture}``, or ``{experiment}_{architecture}`` without a tag."""
    return f"{experiment}_{model_tag}_{architecture}" if model_tag else f"{experiment}_{architecture}"


def _pip_requirements() -> list[str]:
    from importlib import metadata

    reqs = []
    for dist in ("tensorflow", "keras"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return reqs


def log_and_register(ctx, model, name: str, register: bool = True, *, architecture: str | None = None,
                     class_names: list[str] | None = None, example=None) -> dict[str, Any]:
    """Log ``model`` with MLflow's Keras flavour in the current run and (optionally) register it.

    ``example`` (a few input images) gives the logged model an input/output signature.
    Returns ``{"model_uri": ...}`` plus ``model_name`` and ``model_version`` when registered;
    the registered version is tagged with the architecture, class names and input shape.
    """
    import mlflow
    import mlflow.keras

    signature = None
    if example is not None and len(example):
        from mlflow.models import infer_signature

        sample = example[:2]
        signature = infer_signature(sample, predict(model, sample, len(sample)))
    with ctx.progress("logging model", total=None):
        info = mlflow.keras.log_model(model, name="model", registered_model_name=name if register else None,
                                      pip_requirements=_pip_requirements(), signature=signature)
    out: dict[str, Any] = {"model_uri": info.model_uri}
    if register:
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        tags = {TAG_INPUT_SHAPE: json.dumps(list(input_shape_of(model)))}
        if architecture:
            tags[TAG_ARCHITECTURE] = architecture
        if class_names is not None:
            tags[TAG_CLASS_NAMES] = json.dumps(list(class_names))
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
        out.update(model_name=name, model_version=version)
        # later steps in this process that load this version get the model in memory
        _MODELS.put(_memo_key(ctx.engine, name, version), model)
        ctx.output("model_name", name)
        ctx.output("model_version", version)
    ctx.output("model_uri", info.model_uri)
    return out


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``"name"`` -> ``(name, None)``; ``"name/3"`` -> ``(name, "3")``; ``"name/latest"`` -> ``(name, None)``."""
    ref = (ref or "").strip()
    if not ref:
        raise ModelNotFoundError("no model given: expected 'name' or 'name/version'")
    name, _, version = ref.partition("/")
    if version in ("", "latest"):
        return name, None
    if not version.isdigit():
        raise ModelNotFoundError(f"model '{ref}': version must be a number, got '{version}'")
    return name, version


def resolve_model_ref(engine, ref: str) -> tuple[str, str]:
    """``(name, version)`` of an existing registered model version; raises :class:`ModelNotFoundError`."""
    from mlflow.exceptions import MlflowException

    name, version = parse_model_ref(ref)
    client = engine.mlflow_client()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException as exc:  # pragma: no cover - store errors
        raise ModelNotFoundError(f"model '{name}': cannot query the registry: {exc}") from None
    numbers = sorted(int(v.version) for v in versions)
    if not numbers:
        known = sorted(m.name for m in client.search_registered_models())
        hint = f" Registered models: {', '.join(known)}." if known else " No model is registered yet (train with -P register_model=true)."
        raise ModelNotFoundError(f"no registered model named '{name}' in {engine.tracking_uri}.{hint}")
    if version is None:
        return name, str(numbers[-1])
    if int(version) not in numbers:
        raise ModelNotFoundError(f"model '{name}' has no version {version}; versions: "
                                 f"{', '.join(map(str, numbers))}")
    return name, version


def check_model_ref(engine, ref: str | None) -> str | None:
    """For a task's ``check``: ``None`` if ``ref`` names an existing model version, else the message."""
    if not ref:
        return None
    try:
        resolve_model_ref(engine, ref)
    except ModelNotFoundError as exc:
        return str(exc)
    return None


def model_version_tags(engine, ref: str) -> dict[str, str]:
    """The tags of a registered model version (architecture, class names, input shape...)."""
    name, version = resolve_model_ref(engine, ref)
    mv = engine.mlflow_client().get_model_version(name, version)
    return dict(mv.tags or {})


def _model_memo_capacity() -> int:
    """``GNOMON_MODEL_MEMO``: how many loaded models to keep (default 4; 0 turns the memos off)."""
    from . import settings

    return settings.model_memo()


def _model_memo():
    from .memo import LRU

    return LRU(_model_memo_capacity)


# Keras models loaded from the registry in this process. A registered model version does not
# change, so the steps of a workflow that evaluate the same model twelve times load (and trace its
# predict function) once. The key holds the version's run id and creation time, so a model deleted
# and registered again under the same name and version number is never served stale.
_MODELS = _model_memo()


def _memo_key(engine, name: str, version: str) -> tuple:
    mv = engine.mlflow_client().get_model_version(name, version)
    return (str(engine.tracking_uri), name, str(version), mv.run_id, mv.creation_timestamp)


def load_registered_model(engine, ref: str):
    """Load registered model ``name`` or ``name/version`` as a Keras model (compiled if it was).

    The model is shared with later callers in this process (``GNOMON_MODEL_MEMO``): evaluate and
    attack it, but do not train or modify it in place; ``keras.models.clone_model`` it first.
    """
    import mlflow.keras

    name, version = resolve_model_ref(engine, ref)
    key = _memo_key(engine, name, version)
    model = _MODELS.get(key)
    if model is not None:
        return model
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
        model = mlflow.keras.load_model(f"models:/{name}/{version}")
    _MODELS.put(key, model)
    return model
