"""Building and compiling Keras models, and fitting images to a model's input."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..context import Services

from typing import Any

from ..errors import GnomonError


def quiet_tensorflow() -> None:
    """Hide TensorFlow's C++ start-up chatter (CUDA probing, graph notes) unless asked for.

    Only effective before TensorFlow is imported; an explicit ``TF_CPP_MIN_LOG_LEVEL`` of 0 or 1
    is respected.
    """
    import os
    import sys

    from ..quiet import verbose

    if verbose():
        return
    if "tensorflow" not in sys.modules and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") in ("", "2"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


def build_model(services: Services, architecture: str, input_shape, n_classes: int):
    """Build the registered architecture ``architecture`` for ``input_shape`` (h, w, c) and ``n_classes``."""
    spec = services.registry.get("model", architecture)
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3:
        raise GnomonError(f"model '{architecture}': input_shape must be (height, width, channels), got {shape}")
    if int(n_classes) < 2:
        raise GnomonError(f"model '{architecture}': need at least 2 classes, got {n_classes}")
    model = spec.build(shape, int(n_classes))
    warn_if_slow_on_cpu(architecture, model)
    return model


#: Above this many parameters a model trains slowly without a GPU (le_net has 1.2 M, vgg16 33.6 M).
SLOW_ON_CPU_PARAMS = 10_000_000


def warn_if_slow_on_cpu(architecture: str, model) -> None:
    """Warn (:class:`~gnomon.core.quiet.GnomonWarning`) when a large model will run on the CPU."""
    import warnings

    import tensorflow as tf

    from ..quiet import GnomonWarning

    n_params = int(model.count_params())
    if n_params < SLOW_ON_CPU_PARAMS or tf.config.list_physical_devices("GPU"):
        return
    warnings.warn(GnomonWarning(
        f"model '{architecture}' has {n_params / 1e6:.1f} M parameters and no GPU is visible: on this CPU "
        "it trains and predicts slowly; try a fraction of an epoch first (-P epochs=0.05)"), stacklevel=2)


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
