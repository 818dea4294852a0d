"""Names shared by the model helpers: logged metric names, registered-version tags, the not-found error."""

from __future__ import annotations

from ..errors import GnomonError

#: Metric names (as logged) produced by :func:`compile_model` and :func:`evaluate`.
METRIC_NAMES = ("loss", "accuracy", "precision", "recall", "auc")

#: Tags set on every registered model version.
TAG_ARCHITECTURE = "gnomon.model_architecture"
TAG_CLASS_NAMES = "gnomon.class_names"
TAG_INPUT_SHAPE = "gnomon.input_shape"


class ModelNotFoundError(GnomonError):
    """A registered model (or one of its versions) does not exist."""

    exit_code = 2
