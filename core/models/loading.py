"""Loading registered models, remembered per process (``GNOMON_MODEL_MEMO``)."""

from __future__ import annotations

from .predict import _model_memo_capacity
from .refs import resolve_model_ref


def _model_memo():
    from ..memo import LRU

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


def remember_loaded(engine, name: str, version: str, model) -> None:
    """Keep ``model`` as the loaded copy of registered version ``name/version`` (just logged by this process)."""
    _MODELS.put(_memo_key(engine, name, version), model)
