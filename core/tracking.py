"""Where runs are tracked: the embedded default store, experiments, quiet MLflow.

The embedded default needs no server: an SQLite database ``$GNOMON_HOME/mlflow.db``
and artifacts under ``$GNOMON_HOME/artifacts`` (``GNOMON_HOME`` defaults to
``~/.gnomon``). ``MLFLOW_TRACKING_URI`` overrides it (e.g. a shared ``mlflow server``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import GnomonError

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


#: MLflow's HTTP retry settings gnomon uses unless the user set them: an unreachable tracking
#: server fails in about 10 s instead of MLflow's default of about 4 minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5"}
#: Seconds to wait for a TCP connection to a tracking server before giving up.
CONNECT_TIMEOUT_S = 5.0


class TrackingUnavailableError(GnomonError):
    """The tracking server cannot be reached (one line, credentials masked)."""


def describe_uri(uri: str) -> str:
    """``uri`` for people: credentials masked."""
    from .redact import redact

    return redact(uri)


def check_reachable(uri: str) -> None:
    """Fail fast, with one line, if the HTTP(S) tracking server ``uri`` does not accept connections."""
    import socket
    from urllib.parse import urlsplit

    if not uri.startswith(("http://", "https://")):
        return
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise TrackingUnavailableError(f"cannot reach the tracking server {describe_uri(uri)}: {reason} "
                                       "(MLFLOW_TRACKING_URI)") from None


def unreachable_error(exc: BaseException) -> GnomonError | None:
    """A one-line :class:`TrackingUnavailableError` if ``exc`` comes from an unreachable tracking server."""
    seen, current = 0, exc
    while current is not None and seen < 12:
        name = type(current).__name__
        text = str(current)
        if name in {"ConnectionError", "MaxRetryError", "NewConnectionError", "ConnectTimeoutError",
                    "ConnectTimeout", "ReadTimeout"} or "Max retries exceeded" in text:
            uri = os.environ.get("MLFLOW_TRACKING_URI") or ""
            where = f" {describe_uri(uri)}" if uri else ""
            import re

            # the innermost cause named in urllib3's text, e.g. RemoteDisconnected or ConnectionRefusedError
            causes = re.findall(r"([A-Z]\w*(?:Error|Disconnected|Timeout|Refused|Exception))\(", text)
            reason = causes[-1] if causes else name
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
            after = f" after {retries} retries" if retries and "Max retries exceeded" in text else ""
            error = TrackingUnavailableError(f"cannot reach the tracking server{where}: {reason}{after}")
            error.__cause__ = exc
            return error
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def quiet_mlflow() -> None:
    """Silence MLflow's and alembic's start-up chatter (migrations, URI notes); bound its HTTP retries."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # urllib3's "Retrying (...)" warnings: the outcome is reported in one line (unreachable_error)
    for name in ("alembic", "mlflow", "mlflow.store", "mlflow.tracking", "mlflow.models", "mlflow.utils",
                 "urllib3.connectionpool"):
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


def setup_tracking(uri: str | None = None, *, reap: bool = True) -> str:
    """Point MLflow at ``uri`` (or the default) and return it. Imports mlflow.

    The first time per process and store (with ``reap``), runs left RUNNING by dead gnomon
    processes of this host are marked FAILED (:func:`reap_orphans`).
    """
    uri = uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    quiet_mlflow()
    check_reachable(uri)
    import mlflow

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; restore the caller's environment so
    # that a later engine in this process (another GNOMON_HOME, say) still sees its own default.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous
    from .embedded_store import prepare

    prepare(uri)  # SQLite: create/migrate under an inter-process lock
    if reap and uri not in _reaped:
        _reaped.add(uri)
        reap_orphans(uri)
    return uri


_reaped: set[str] = set()  # stores already searched for orphaned runs by this process


def reap_orphans(uri: str) -> list[str]:
    """Mark FAILED the runs left RUNNING by dead gnomon processes of this host (never raises)."""
    import mlflow

    from .lifecycle import reap_orphans as reap

    try:
        reaped = reap(mlflow.MlflowClient(tracking_uri=uri))
    except Exception as exc:  # a best-effort sweep must never stop a run, but an unreachable server does
        mapped = unreachable_error(exc)
        if mapped is not None:
            raise mapped from None
        logging.getLogger("gnomon.tracking").debug("orphan sweep failed: %s", exc)
        return []
    if reaped:
        logging.getLogger("gnomon.tracking").warning(
            "gnomon: marked %d run(s) FAILED whose process died: %s", len(reaped), ", ".join(reaped))
    return reaped


#: MLflow 3's experiment-type tag and its value for model training: the UI opens such an
#: experiment on its runs table instead of its GenAI view (traces, evaluations).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ensure_experiment(name: str, uri: str) -> str:
    """The id of experiment ``name``, created if needed (artifacts under GNOMON_HOME when embedded).

    On an SQLite store the creation happens under the store's inter-process lock, so processes
    starting together agree on one experiment. gnomon's experiments are model-training experiments:
    they carry MLflow's experiment-kind tag (:data:`EXPERIMENT_KIND_TAG`), added to an existing
    experiment that lacks it.
    """
    import contextlib

    import mlflow

    from .embedded_store import sqlite_path, store_lock

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage != "deleted":
        _mark_model_training(client, experiment)
        return experiment.experiment_id
    db = sqlite_path(uri)
    with store_lock(db) if db is not None else contextlib.nullcontext():
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            _mark_model_training(client, experiment)
            return experiment.experiment_id
        artifact_location = None
        if uri.startswith("sqlite:"):
            import re

            folder = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"
            artifact_location = (gnomon_home() / "artifacts" / folder).resolve().as_uri()
        try:
            return client.create_experiment(name, artifact_location=artifact_location,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:  # created concurrently by another process (a tracking server has no lock)
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id


def _mark_model_training(client, experiment) -> None:
    """Tag an experiment made before gnomon tagged them (or by someone else) as model training."""
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def runs_page_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI page listing an experiment's runs (``base_url``: the UI's or server's root URL).

    ``workflowType=machine_learning`` switches MLflow 3's UI to its model-training mode, which it
    otherwise remembers per browser (default: GenAI), so the link shows the runs table.
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
