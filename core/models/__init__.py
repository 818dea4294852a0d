"""Model helpers shared by every task, one module per job.

Contract (docs/architecture.md, "Models"): architectures are :class:`~gnomon.core.registry.ModelSpec`
entries whose ``build(input_shape, n_classes)`` returns an uncompiled Keras model taking NHWC
images in [0, 1]. Registered models are named ``{EXPERIMENT}_{model_tag}_{model_architecture}``
(or ``{EXPERIMENT}_{model_architecture}``) and referred to as ``name`` (latest version) or
``name/version``.

- :mod:`.names`: metric names, registered-version tags, :class:`ModelNotFoundError`;
- :mod:`.build`: build/compile, optimizers, metrics, fitting images to a model's input;
- :mod:`.training`: fractional epochs, the Keras progress/metrics callback, early stopping;
- :mod:`.predict`: batched predictions, remembered per model;
- :mod:`.evaluate`: metrics from probabilities, attack success rate, :func:`evaluate`;
- :mod:`.refs`: model references: naming, parsing, resolving, and :func:`check_model`, the one
  "model exists and its architecture matches" check tasks (builtin and contrib) use;
- :mod:`.publish`: logging to MLflow and registering;
- :mod:`.loading`: loading registered versions, remembered per process.

Everything is re-exported here. Nothing imports tensorflow, keras or mlflow at module import time.
"""

from __future__ import annotations

from .build import (
    SLOW_ON_CPU_PARAMS,
    build_model,
    compile_model,
    fit_to_model,
    input_shape_of,
    keras_metrics,
    layer_table,
    make_optimizer,
    n_outputs,
    one_hot,
    quiet_tensorflow,
    warn_if_slow_on_cpu,
)
from .evaluate import attack_success_rate, evaluate, metrics_from_probs
from .loading import load_registered_model, remember_loaded
from .names import METRIC_NAMES, TAG_ARCHITECTURE, TAG_CLASS_NAMES, TAG_INPUT_SHAPE, ModelNotFoundError
from .predict import predict
from .publish import log_and_register
from .refs import (
    check_model,
    check_model_ref,
    model_version_tags,
    parse_model_ref,
    recorded_architecture,
    registered_model_name,
    resolve_model_ref,
)
from .training import early_stopping, epochs_to_run, total_steps, training_callback

__all__ = [
    "SLOW_ON_CPU_PARAMS",
    "METRIC_NAMES", "TAG_ARCHITECTURE", "TAG_CLASS_NAMES", "TAG_INPUT_SHAPE", "ModelNotFoundError",
    "attack_success_rate", "build_model", "check_model", "check_model_ref", "compile_model",
    "early_stopping", "epochs_to_run", "evaluate", "fit_to_model", "input_shape_of", "keras_metrics",
    "layer_table", "load_registered_model", "log_and_register", "make_optimizer", "metrics_from_probs",
    "model_version_tags", "n_outputs", "one_hot", "parse_model_ref", "predict", "quiet_tensorflow", "warn_if_slow_on_cpu",
    "recorded_architecture", "registered_model_name", "remember_loaded", "resolve_model_ref",
    "total_steps", "training_callback",
]
