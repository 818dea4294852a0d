"""Evaluation: Keras-equivalent metrics from probabilities, attack success rate."""

from __future__ import annotations

from ..errors import GnomonError
from .build import fit_to_model, keras_metrics, n_outputs, one_hot
from .predict import predict


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
