"""Loading registered models, remembered by the engine's store (``GNOMON_MODEL_MEMO``).

A registered model version does not change, so the steps of a workflow that evaluate the same
model twelve times load (and trace its predict function) once: ``services.store.models``. The key
holds the version's run id and creation time, so a model deleted and registered again under the
same name and version number is never served stale.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..context import Services

from .refs import resolve_model_ref


def _memo_key(services: Services, name: str, version: str) -> tuple:
    mv = services.mlflow_client().get_model_version(name, version)
    return (str(services.tracking_uri), name, str(version), mv.run_id, mv.creation_timestamp)


def load_registered_model(services: Services, ref: str):
    """Load registered model ``name`` or ``name/version`` as a Keras model (compiled if it was).

    The model is shared with later callers of the same engine (``GNOMON_MODEL_MEMO``): evaluate and
    attack it, but do not train or modify it in place; ``keras.models.clone_model`` it first.
    """
    import mlflow.keras

    name, version = resolve_model_ref(services, ref)
    key = _memo_key(services, name, version)
    memo = services.store.models
    model = memo.get(key)
    if model is not None:
        return model
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Skipping variable loading for optimizer.*")
        model = mlflow.keras.load_model(f"models:/{name}/{version}")
    memo.put(key, model)
    return model


def remember_loaded(services: Services, name: str, version: str, model) -> None:
    """Keep ``model`` as the loaded copy of registered version ``name/version`` (just logged by this process)."""
    services.store.models.put(_memo_key(services, name, version), model)
