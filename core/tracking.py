"""Where runs are tracked: the embedded default store, experiments, quiet MLflow.

The embedded default needs no server: an SQLite database ``$GNOMON_HOME/mlflow.db``
and artifacts under ``$GNOMON_HOME/artifacts`` (``GNOMON_HOME`` defaults to
``~/.gnomon``). ``MLFLOW_TRACKING_URI`` overrides it (e.g. a shared ``mlflow server``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

DEFAULT_EXPERIMENT = "gnomon"


def gnomon_home() -> Path:
    """gnomon's data folder (``$GNOMON_HOME`` or ``~/.gnomon``)."""
    from . import settings

    return settings.home()


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the embedded SQLite store."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{gnomon_home() / 'mlflow.db'}"


def is_embedded(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def experiment_name(explicit: str | None = None) -> str:
    """``--experiment``, else ``GNOMON_EXPERIMENT``, else ``gnomon``."""
    from . import settings

    return explicit or settings.text("GNOMON_EXPERIMENT") or DEFAULT_EXPERIMENT


def quiet_mlflow() -> None:
    """Silence MLflow's and alembic's start-up chatter (migrations, URI notes)."""
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking", "mlflow.models", "mlflow.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # with a tracking server MLflow writes "View run ... at: URL" to stdout at every run's end,
    # which would corrupt --json output
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's usage telemetry thread rewrites os.environ while requests iterates it, which made
    # work horses fail at random (KeyError: '_MLFLOW_TELEMETRY_SESSION_ID'); it also phones home
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import warnings

    warnings.filterwarnings("ignore", module="mlflow")


def setup_tracking(uri: str | None = None) -> str:
    """Point MLflow at ``uri`` (or the default) and return it. Imports mlflow."""
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    quiet_mlflow()
    import mlflow

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; restore the caller's environment so
    # that a later engine in this process (another GNOMON_HOME, say) still sees its own default.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    return uri


def ensure_experiment(name: str, uri: str) -> str:
    """The id of experiment ``name``, created if needed (artifacts under GNOMON_HOME when embedded)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    artifact_location = None
    if uri.startswith("sqlite:"):
        import re

        folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"
        artifact_location = (gnomon_home() / "artifacts" / folder).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id
