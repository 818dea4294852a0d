"""The RQ worker (``gnomon worker``) and the function it runs for each job.

``gnomon worker`` pulls the latest plugin set once (to fail fast on bad credentials), then
runs an RQ :class:`rq.Worker` that forks a work horse per job. In the horse,
:func:`run_job` pulls the exact manifest version the job was submitted against (no S3
call when that set is already cached), loads exactly those plugins - never the builtins or
entry points of the worker's own environment - and runs the task through the engine, which
logs to ``MLFLOW_TRACKING_URI`` (the shared tracking server).

Abandoned jobs: the worker refreshes the job's entry in RQ's StartedJobRegistry every
``heartbeat`` seconds, with a time-to-live of ``heartbeat + abandoned_after``. If the worker
dies, the entry expires and the next registry cleanup by any worker (every
``maintenance_interval`` seconds, and at its start) re-enqueues the job when it has retries
left (``gnomon submit --retries N``), else moves it to the failed registry with
``AbandonedJobError``; :func:`on_job_failure` then marks the MLflow run it left RUNNING as FAILED.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from . import RemoteError

ENV_PLUGINS = "GNOMON_WORKER_PLUGINS"
ENV_CACHE = "GNOMON_WORKER_CACHE"

#: Attribute of the RQ job object, set by the worker in its work horse, that carries the plugin set the worker
#: loaded at start as ``(manifest_id, PluginSet)``: a job submitted against that manifest uses it as it is (no
#: pull, no plugin loading, no registry to build); a job naming another version pulls and loads that one.
WARM_ATTR = "_gnomon_warm"


def _current_job():
    from rq import get_current_job

    return get_current_job()


def _save(job, **values: Any) -> None:
    if job is None:
        return
    job.meta.update(values)
    job.save_meta()


def run_job(task: str, params: dict[str, Any], manifest_id: str | None = None,
            experiment: str | None = None, kind: str = "task") -> dict[str, Any]:
    """Run one task job (called by RQ in the work horse); returns the run's result as a dict.

    (Workflow steps are jobs of their own: :mod:`.stepjob`.)
    """
    from ..errors import GnomonError, TaskFailedError
    from ..redact import redact

    job = _current_job()
    attempts = int((job.meta.get("attempts") if job else 0) or 0) + 1
    started = {"function_started_at": time.time(), "worker_host": socket.gethostname(), "attempts": attempts}
    try:
        engine = job_engine(job, manifest_id, experiment, needs=task, meta=started)
        tags = {"gnomon.job_id": job.id if job else "", "gnomon.queue": job.origin if job else "",
                "gnomon.manifest": (job.meta.get("pulled_manifest") if job else "") or ""}
        result = engine.run(task, params, tags=tags)
    except TaskFailedError as exc:
        _save(job, run_id=exc.run_id, error=redact(exc))
        raise
    except GnomonError as exc:
        _save(job, error=redact(exc))
        raise
    _save(job, run_id=result.run_id, error=None)
    return result.to_dict()


def job_engine(job, manifest_id: str | None, experiment: str | None, *, needs: str | None = None,
               meta: dict[str, Any] | None = None):
    """An engine with exactly the plugins the job was submitted against (``GNOMON_WORKER_PLUGINS`` set:
    the synced manifest ``manifest_id``: the set the worker loaded at start when it is that version, else
    pulled into the worker's cache if needed; else the local ones).

    Records the pulled manifest and the plugins on the job, with ``meta``, in one save. Raises
    :class:`RemoteError` when a plugin is broken and the task ``needs`` is missing because of it.
    """
    from .. import settings
    from ..engine import Engine
    from ..plugins import load_plugins
    from .pull import load_synced_plugins, pull

    if job is not None:  # in memory now; saved below, or by whoever records an error
        job.meta.update(meta or {})
    values: dict[str, Any] = {}
    url = settings.text(ENV_PLUGINS)
    warm_manifest, warm_plugins = getattr(job, WARM_ATTR, None) or (None, None)
    if url and manifest_id is not None and warm_manifest == manifest_id:
        plugins = warm_plugins
        values.update(pulled_manifest=manifest_id, pull_s=0.0)
    elif url:
        began = time.perf_counter()
        report = pull(url, settings.text(ENV_CACHE), version=manifest_id)
        values.update(pulled_manifest=report.manifest_id, pull_s=round(time.perf_counter() - began, 4))
        plugins = load_synced_plugins(report.set_dir)
    else:
        plugins = load_plugins()
    engine = Engine(plugins, experiment=experiment, show_progress=False)
    engine.registry  # noqa: B018 - registration errors surface now
    values["plugins"] = {i.name: {"version": i.version, "broken": i.error} for i in plugins.infos.values()}
    _save(job, **values)
    broken = [f"{i.name}: {i.error}" for i in plugins.broken]
    if broken and needs is not None and needs not in engine.registry.tasks:
        raise RemoteError(f"broken plugins on this worker: {'; '.join(broken)}")
    return engine


def on_job_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: record abandoned jobs and mark their RUNNING MLflow runs FAILED."""
    name = getattr(exc_type, "__name__", str(exc_type))
    if name != "AbandonedJobError":
        return  # the engine has already marked the run FAILED
    job.meta["error"] = ("the worker died while running this job (AbandonedJobError); "
                         + ("it was re-enqueued" if (job.retries_left or 0) > 0 else "no retries left"))
    try:
        job.save_meta()
    except Exception:
        pass
    mark_runs_failed(job.id, "worker died (AbandonedJobError)")


def on_job_stopped(job, connection) -> None:
    """RQ stopped callback (``gnomon jobs cancel`` of a running job): mark its MLflow run KILLED."""
    mark_runs_failed(job.id, "stopped by 'gnomon jobs cancel'", status="KILLED")


def mark_runs_failed(job_id: str, reason: str, status: str = "FAILED") -> list[str]:
    """Mark RUNNING MLflow runs tagged with ``gnomon.job_id=job_id`` as ``status``; returns their ids."""
    try:  # the worker's store: MLFLOW_TRACKING_URI, else the embedded store of its GNOMON_HOME
        from ..tracking import default_tracking_uri, setup_tracking

        uri = setup_tracking(default_tracking_uri(), reap=False)  # mark by job id first, with the reason
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=f"tags.`gnomon.job_id` = '{job_id}' and "
                                                             "attributes.status = 'RUNNING'")
        for run in runs:
            client.set_tag(run.info.run_id, "gnomon.error", reason)
            client.set_terminated(run.info.run_id, status=status)
        return [r.info.run_id for r in runs]
    except Exception:  # never break RQ's registry cleanup
        return []


def worker_class():
    """``rq.Worker`` whose started-job entries expire ``abandoned_after`` seconds after a missed heartbeat."""
    from rq import Worker

    class GnomonWorker(Worker):
        abandoned_after = 60
        #: ``(manifest_id, PluginSet)`` loaded by ``start_worker``; forked horses inherit it with the worker
        warm: tuple[str, Any] | None = None

        def perform_job(self, job, *args, **kwargs):
            # runs in the work horse: the job's code reaches the warm plugin set through the job it runs
            if self.warm is not None:
                setattr(job, WARM_ATTR, self.warm)
            return super().perform_job(job, *args, **kwargs)

        def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
            return int(self.job_monitoring_interval + self.abandoned_after)

        def bootstrap(self, *args, **kwargs):
            super().bootstrap(*args, **kwargs)
            from ..redact import install

            install("rq.worker", "rq.job")  # RQ's own handlers, set up just now, mask credentials too

        def handle_job_failure(self, job, queue, *args, **kwargs):
            # RQ runs no failure callback when the work horse itself dies (SIGTERM, SIGKILL, out of memory)
            exc_string = kwargs.get("exc_string") or (args[1] if len(args) > 1 else "")
            result = super().handle_job_failure(job, queue, *args, **kwargs)
            if "terminated unexpectedly" in (exc_string or ""):
                mark_runs_failed(job.id, f"the work horse died: {exc_string.strip()}")
            return result

    return GnomonWorker


def _warm_run_context() -> None:
    """Let MLflow's run-context providers look once, here, at what every run of this process gets tagged with
    (the git commit of the entry point, the user, ...): they keep it, so forked work horses do not import
    GitPython and search for a repository at every run (~0.1 s per job)."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        resolve_tags()
    except Exception:  # a private MLflow API: without it each run just looks again
        pass


def _sweep_orphans_once(echo) -> None:
    """The orphan sweep of the tracking store (runs left RUNNING by dead gnomon processes of this host), here
    once: forked work horses inherit the record that it ran, instead of paying its two MLflow requests per job."""
    from ..errors import GnomonError
    from ..tracking import default_tracking_uri, setup_tracking

    try:
        setup_tracking(default_tracking_uri())
    except GnomonError as exc:  # the server may come up after the worker: each job then sweeps itself
        echo(f"warning: {exc}")


def start_worker(
    redis: str | None,
    queues: list[str],
    plugins_url: str | None,
    *,
    cache: str | None = None,
    endpoint: str | None = None,
    burst: bool = False,
    name: str | None = None,
    heartbeat: int = 10,
    abandoned_after: int = 60,
    maintenance_interval: int = 60,
    preload: bool = True,
    log_level: str = "INFO",
    echo=print,
) -> None:
    """Run an RQ worker on ``queues`` until stopped (or until the queues are empty with ``burst``)."""
    from .jobs import connect, redact, redis_url, serializer
    from .jobs import queue as make_queue

    warm = None
    if plugins_url:
        os.environ[ENV_PLUGINS] = plugins_url
        if cache:
            os.environ[ENV_CACHE] = str(cache)
        if endpoint:
            os.environ["AWS_ENDPOINT_URL"] = endpoint
        from .pull import pull

        report = pull(plugins_url, cache or None)
        echo(f"plugins: {redact(plugins_url)} manifest {report.manifest_id} "
             f"({len(report.fetched)} fetched, {len(report.reused)} cached)")
    else:
        echo("plugins: none given (--plugins); jobs use the plugins installed in this environment")
    if preload:  # imported once here, so each forked work horse starts warm
        from ..tracking import quiet_mlflow

        quiet_mlflow()
        import mlflow  # noqa: F401

        from .. import engine  # noqa: F401
        from ..workflows import runner  # noqa: F401 - what a workflow step's job imports
        from . import stepjob  # noqa: F401

        _warm_run_context()

        if plugins_url:
            # Load the synced plugins once: their dependencies are then imported in every forked horse and
            # their bytecode is cached next to them. Each job still loads the exact version it names.
            from .pull import load_synced_plugins

            loaded = load_synced_plugins(report.set_dir)
            loaded.registry  # noqa: B018
            for info in loaded.broken:
                echo(f"warning: synced plugin '{info.name}' is broken on this worker: {info.error}")
            warm = (report.manifest_id, loaded)  # jobs against this version use it as is
        _sweep_orphans_once(echo)
    url = redis_url(redis)
    connection = connect(url)
    cls = worker_class()
    cls.abandoned_after = abandoned_after
    worker = cls([make_queue(connection, q) for q in queues], connection=connection, serializer=serializer(),
                 name=name, job_monitoring_interval=heartbeat, maintenance_interval=maintenance_interval,
                 worker_ttl=maintenance_interval + 15)  # an idle worker wakes up for maintenance
    worker.warm = warm
    echo(f"worker {worker.name}: redis {redact(url)}, queues {', '.join(queues)}, "
         f"tracking {redact(os.environ.get('MLFLOW_TRACKING_URI') or '') or 'embedded store'}")
    try:
        worker.work(burst=burst, logging_level=log_level, with_scheduler=True)
    except Exception as exc:  # redis vanished and similar
        raise RemoteError(f"worker stopped: {type(exc).__name__}: {exc}") from None
