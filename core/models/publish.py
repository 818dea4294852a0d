"""Logging a model to the current MLflow run and registering it."""

from __future__ import annotations

import json
from typing import Any

from .build import input_shape_of
from .loading import remember_loaded
from .names import TAG_ARCHITECTURE, TAG_CLASS_NAMES, TAG_INPUT_SHAPE
from .predict import predict


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
    from ..quiet import mlflow_chatter

    with ctx.progress("logging model", total=None), mlflow_chatter():
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
        remember_loaded(ctx, name, version, model)
        ctx.output("model_name", name)
        ctx.output("model_version", version)
    ctx.output("model_uri", info.model_uri)
    return out
