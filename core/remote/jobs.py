"""Jobs on Redis through RQ: submit (after validation), list, show, cancel.

A job is an RQ job calling :func:`gnomon.core.remote.worker.run_job` with JSON-serialised
arguments: the task name, its parameters, the manifest version it was validated against and
the MLflow experiment. ``job.meta`` carries what ``gnomon jobs show`` prints (task, manifest,
run id, error).
"""

from __future__ import annotations

import time
from typing import Any

from ..redact import redact  # noqa: F401 - re-exported for callers of jobs.redact
from . import RemoteError

DEFAULT_QUEUE = "gnomon"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
JOB_FUNCTION = "gnomon.core.remote.worker.run_job"
RESULT_TTL = 7 * 24 * 3600
FINAL = {"finished", "failed", "stopped", "canceled"}


def redis_url(explicit: str | None = None) -> str:
    """``--redis``, else ``GNOMON_REDIS_URL``, else ``redis://127.0.0.1:6379/0``."""
    from .. import settings

    return explicit or settings.text("GNOMON_REDIS_URL") or DEFAULT_REDIS


def connect(url: str | None = None):
    """A Redis connection, checked with PING; an unreachable server is a one-line error."""
    import redis

    url = redis_url(url)
    try:
        connection = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
        connection.ping()
    except (redis.exceptions.RedisError, ValueError) as exc:
        raise RemoteError(f"cannot reach Redis at {redact(url)}: {type(exc).__name__}: {exc}") from None
    return connection


def serializer():
    from rq.serializers import JSONSerializer

    return JSONSerializer


def queue(connection, name: str = DEFAULT_QUEUE):
    from rq import Queue

    return Queue(name, connection=connection, serializer=serializer())


def submit(connection, task: str, params: dict[str, Any], *, queue_name: str = DEFAULT_QUEUE,
           manifest_id: str | None = None, plugins_url: str | None = None, experiment: str | None = None,
           retries: int = 0, timeout: int | None = None, retry_interval: int = 0, kind: str = "task"):
    """Enqueue an already-validated task run; returns the RQ job (workflows: :mod:`.fanout`)."""
    from rq import Callback, Retry

    meta = {"kind": kind, "task": task, "params": params, "manifest": manifest_id, "plugins_url": plugins_url,
            "experiment": experiment, "submitted_at": time.time(), "retries": retries}
    q = queue(connection, queue_name)
    return q.enqueue(
        JOB_FUNCTION,
        kwargs={"task": task, "params": params, "manifest_id": manifest_id, "experiment": experiment, "kind": kind},
        job_timeout=timeout if timeout else -1,
        result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL,
        retry=Retry(max=retries, interval=retry_interval) if retries > 0 else None,
        description=f"gnomon {kind} {task}",
        on_failure=Callback("gnomon.core.remote.worker.on_job_failure"),
        on_stopped=Callback("gnomon.core.remote.worker.on_job_stopped"),
        meta=meta,
    )


def fetch(connection, job_id: str):
    """The job ``job_id``; an unknown id is a clear error."""
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        return Job.fetch(job_id, connection=connection, serializer=serializer())
    except NoSuchJobError:
        raise RemoteError(f"no job '{job_id}' in Redis (finished jobs are kept {RESULT_TTL // 86400} days)") from None


def status(job) -> str:
    value = job.get_status(refresh=True)
    return getattr(value, "value", str(value)) if value is not None else "unknown"


def error_text(job) -> str | None:
    """The job's error in one line: gnomon's message if the task failed, else RQ's last exception line."""
    meta_error = (job.meta or {}).get("error")
    if meta_error:
        return meta_error
    result = job.latest_result()
    exc = getattr(result, "exc_string", None) if result is not None else None
    if not exc:
        return None
    lines = [line for line in exc.strip().splitlines() if line.strip()]
    return lines[-1] if lines else exc


def describe(job) -> dict[str, Any]:
    """Everything ``gnomon jobs show`` prints about a job."""
    meta = job.meta or {}
    info = {
        "id": job.id, "status": status(job), "queue": job.origin, "kind": meta.get("kind", "task"),
        "task": meta.get("task"),
        "params": meta.get("params"), "manifest": meta.get("pulled_manifest") or meta.get("manifest"),
        "submitted_manifest": meta.get("manifest"), "worker": job.worker_name or meta.get("worker"),
        "run_id": meta.get("run_id"), "experiment": meta.get("experiment"),
        "enqueued_at": _iso(job.enqueued_at), "started_at": _iso(job.started_at), "ended_at": _iso(job.ended_at),
        "attempts": meta.get("attempts", 0), "plugins": meta.get("plugins"), "error": None, "result": None,
    }
    if meta.get("workflow_run"):  # a step (or the closing job) of a workflow run on workers
        info.update({"workflow": meta.get("workflow"), "step": meta.get("step"), "workflow_run": meta["workflow_run"],
                     "outcome": meta.get("outcome")})
    if info["status"] in {"failed", "stopped"} or meta.get("error"):
        info["error"] = error_text(job)
    if info["status"] == "finished":
        info["result"] = job.return_value()
    return info


def _iso(value) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def list_jobs(connection, queue_name: str = DEFAULT_QUEUE, limit: int = 50) -> list[dict[str, Any]]:
    """Jobs of a queue: queued, started, scheduled, deferred, finished, failed, stopped and canceled."""
    from rq.job import Job

    q = queue(connection, queue_name)
    ids: list[str] = list(q.get_job_ids())
    for registry in (q.started_job_registry, q.scheduled_job_registry, q.deferred_job_registry,
                     q.finished_job_registry, q.failed_job_registry, q.canceled_job_registry):
        ids.extend(registry.get_job_ids())
    seen, unique = set(), []
    for job_id in ids:
        if job_id not in seen:
            seen.add(job_id)
            unique.append(job_id)
    jobs = [j for j in Job.fetch_many(unique, connection=connection, serializer=serializer()) if j is not None]
    jobs.sort(key=lambda j: j.enqueued_at or j.created_at, reverse=True)
    return [describe(j) for j in jobs[:limit]]


def cancel(connection, job_id: str) -> str:
    """Cancel a waiting job, or stop a running one; returns what was done."""
    from rq.command import send_stop_job_command

    job = fetch(connection, job_id)
    state = status(job)
    if state in FINAL:
        raise RemoteError(f"job '{job_id}' is already {state}; nothing to cancel")
    if state == "started":
        send_stop_job_command(connection, job_id, serializer=serializer())
        return "stop requested"
    job.cancel()
    return "canceled"


def wait(connection, job_id: str, timeout: float | None = None, poll: float = 0.2) -> dict[str, Any]:
    """Block until the job ends (or ``timeout`` seconds pass) and return :func:`describe`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    job = fetch(connection, job_id)
    while True:
        if status(job) in FINAL:
            return describe(fetch(connection, job_id))
        if deadline is not None and time.monotonic() > deadline:
            raise RemoteError(f"job '{job_id}' did not finish within {timeout:.0f} s (status: {status(job)})")
        time.sleep(poll)
