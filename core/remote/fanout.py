"""Workflow steps fanned out over RQ workers: one RQ job per step, dependencies through RQ's ``depends_on``.

``gnomon workflow run NAME --queue Q`` (and ``gnomon submit --workflow``) validates the whole
workflow here, creates the workflow's parent MLflow run on the shared tracking server, then
enqueues every step as its own RQ job. A step's job ``depends_on`` the jobs of the steps whose
run id or outputs it uses, so RQ keeps it deferred until they have finished and then enqueues
it; independent steps run in parallel on as many workers as listen on the queue.

Nothing but the tracking server passes data between steps: a finished step records its run id
on the parent run (tag ``gnomon.step.NAME.run_id``); a later step reads that tag, then its
inputs' outputs (tags ``gnomon.output.*``), and its task downloads artifacts or registered
models through MLflow. Workers share no filesystem.

Redis holds only the bookkeeping, under ``gnomon:workflow:<parent run id>``: the step -> job
map (``meta``), the set of finished steps (``:done``) and how the workflow ended (``:end``,
written once with SET NX: ``finished``, ``failed`` or ``canceled``). The step that completes the
set enqueues one last job that closes the parent run and builds the report.

The jobs are built and enqueued by :mod:`.schedule` from validated
:class:`~gnomon.core.workflows.plan.Plan` s (one job per step here; one per content key across a
sweep's combinations in :mod:`.sweepfanout`), so anything that expands into plans fans out the same way.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from . import RemoteError
from .schedule import enqueue_jobs, step_jobs

FINISH_FUNCTION = "gnomon.core.remote.stepjob.finish_workflow"
KEY_PREFIX = "gnomon:workflow:"
DEFAULT_STEP_RETRIES = 2
#: job states that will not change any more (RQ's, plus ``skipped`` for steps of an ended workflow)
STEP_FINAL = {"finished", "failed", "stopped", "canceled"}


class FanoutError(RemoteError):
    """A fanned-out workflow could not be submitted, found or cancelled."""


# -- the Redis record --------------------------------------------------------------------
def record_key(run_id: str) -> str:
    return KEY_PREFIX + run_id


def done_key(run_id: str) -> str:
    return KEY_PREFIX + run_id + ":done"


def end_key(run_id: str) -> str:
    return KEY_PREFIX + run_id + ":end"


def closed_key(run_id: str) -> str:
    return KEY_PREFIX + run_id + ":closed"


def load_record(connection, run_id: str) -> dict[str, Any]:
    """The bookkeeping of workflow run ``run_id``; an unknown id is a clear error."""
    raw = connection.get(record_key(run_id))
    if raw is None:
        raise FanoutError(f"no fanned-out workflow with run id '{run_id}' in Redis (records are kept "
                          "7 days; pass the parent run id printed by 'gnomon workflow run --queue')")
    return json.loads(raw)


def ended(connection, run_id: str) -> str | None:
    """``finished``, ``failed`` or ``canceled`` once the workflow has ended, else None."""
    value = connection.get(end_key(run_id))
    return value.decode() if value is not None else None


def mark_ended(connection, run_id: str, state: str, ttl: int) -> bool:
    """Record how the workflow ended; only the first caller wins (returns True)."""
    return bool(connection.set(end_key(run_id), state, nx=True, ex=ttl))


# -- submission ---------------------------------------------------------------------------
@dataclass
class Submission:
    """What ``submit_workflow`` created: the parent run and one job per step."""

    run_id: str
    workflow: str
    queue: str
    experiment: str
    jobs: dict[str, str]
    manifest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "workflow": self.workflow, "queue": self.queue,
                "experiment": self.experiment, "manifest": self.manifest, "status": "queued", "jobs": self.jobs}


def shared_tracking_uri(engine) -> str:
    """The tracking URI the workers must share; the embedded per-machine store is refused."""
    uri = getattr(engine, "_tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise FanoutError("running a workflow's steps on workers needs a tracking server they all share: set "
                          "MLFLOW_TRACKING_URI (the same server as the workers' --tracking-uri)")
    return uri


def submit_workflow(engine, connection, plan, *, queue_name: str, manifest_id: str | None = None,
                    plugins_url: str | None = None, retries: int = DEFAULT_STEP_RETRIES, timeout: int | None = None,
                    resume: bool = False, result_ttl: int | None = None) -> Submission:
    """Create the parent run and enqueue one job per step of a validated plan.

    Args:
        engine: the submitting engine (its experiment receives every run).
        connection: a Redis connection (:func:`gnomon.core.remote.jobs.connect`).
        plan: :func:`~gnomon.core.workflows.validate.plan_workflow`'s plan (steps in a valid order).
        retries: how many times a step whose worker died is re-run (a step whose task raised is not).
        resume: a step whose content key matches a finished run in the experiment reuses that run.
    """
    shared_tracking_uri(engine)
    run_id = _create_parent_run(engine, plan, queue_name, resume)
    jobs = step_jobs([(run_id, plan)], lambda planned: planned.name)
    return submit_jobs(engine, connection, run_id, jobs, workflow=plan.workflow.name, queue_name=queue_name,
                       manifest_id=manifest_id, plugins_url=plugins_url, retries=retries, timeout=timeout,
                       resume=resume, result_ttl=result_ttl)


def submit_jobs(engine, connection, run_id: str, jobs, *, workflow: str, queue_name: str, manifest_id: str | None,
                plugins_url: str | None, retries: int, timeout: int | None, resume: bool,
                result_ttl: int | None = None, record: dict[str, Any] | None = None, what: str = "workflow") -> Submission:
    """Enqueue :func:`~.schedule.step_jobs`'s ``jobs`` under ``run_id``; on any error cancel what was
    enqueued, end the runs FAILED and raise :class:`FanoutError`."""
    from .jobs import RESULT_TTL

    try:
        job_ids = enqueue_jobs(connection, run_id, jobs, workflow=workflow, queue_name=queue_name,
                               experiment=engine.experiment, manifest_id=manifest_id, plugins_url=plugins_url,
                               retries=retries, timeout=timeout, resume=resume, ttl=result_ttl or RESULT_TTL,
                               record=record, experiment_id=engine.ensure_tracking())  # resolved once, cached
    except Exception as exc:
        try:
            cancel_workflow(connection, run_id, reason=f"submission failed: {type(exc).__name__}: {exc}",
                            status="FAILED", engine=engine)
        except FanoutError:  # the record itself was not written: end the runs here
            for child in (record or {}).get("combinations", []):
                end_parent_run(child["run_id"], "FAILED", f"{what} submission failed", engine=engine)
            end_parent_run(run_id, "FAILED", f"submission failed: {type(exc).__name__}: {exc}", engine=engine)
        raise FanoutError(f"could not enqueue {what} '{workflow}': {type(exc).__name__}: {exc}") from exc
    return Submission(run_id=run_id, workflow=workflow, queue=queue_name, experiment=engine.experiment,
                      jobs=job_ids, manifest=manifest_id)


def _create_parent_run(engine, plan, queue_name: str, resume: bool, *, extra_tags: dict[str, str] | None = None,
                       run_name: str | None = None) -> str:
    from mlflow.entities import Param, RunTag

    from .. import __version__
    from ..workflows.runner import PLAN_ARTIFACT, WORKFLOW_TAG, _plan, library_versions

    workflow, variables = plan.workflow, plan.variables
    experiment_id = engine.ensure_tracking()
    client = engine.mlflow_client()
    tags = {
        WORKFLOW_TAG: workflow.name,
        "gnomon.workflow.source": workflow.source,
        "gnomon.workflow.sha256": workflow.digest,
        "gnomon.workflow.resume": str(resume).lower(),
        "gnomon.workflow.queue": queue_name,
        "gnomon.version": __version__,
        "gnomon.versions": json.dumps(library_versions(), sort_keys=True),
        **(extra_tags or {}),
    }
    run = client.create_run(experiment_id, run_name=run_name or f"workflow:{workflow.name}", tags=tags)
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(f"var.{k}", str(v)) for k, v in variables.items()],
                     tags=[RunTag("gnomon.workflow.steps", str(len(plan.steps)))])
    client.log_text(run_id, workflow.text, f"workflow/{workflow.name}.toml")
    client.log_dict(run_id, _plan(workflow, variables, plan), PLAN_ARTIFACT)
    return run_id


# -- status, cancel, wait ---------------------------------------------------------------
def workflow_status(connection, run_id: str, *, with_runs: bool = False) -> dict[str, Any]:
    """Every step's job state, worker, attempts and MLflow run, and the workflow's overall state."""
    from rq.job import Job

    from .jobs import _iso, serializer, status

    record = load_record(connection, run_id)
    order = record["order"]
    job_ids = [record["jobs"][name] for name in order]
    jobs = Job.fetch_many(job_ids, connection=connection, serializer=serializer())
    steps = []
    for name, job_id, job in zip(order, job_ids, jobs, strict=True):
        if job is None:
            steps.append({"step": name, "job": job_id, "status": "expired"})
            continue
        meta = job.meta or {}
        steps.append({
            "step": name, "job": job_id, "task": meta.get("task"), "status": status(job),
            "outcome": meta.get("outcome"), "worker": meta.get("worker") or job.worker_name,
            "run_id": meta.get("run_id"), "attempts": meta.get("attempts", 0),
            "started_at": _iso(job.started_at), "ended_at": _iso(job.ended_at), "error": meta.get("error"),
        })
    counts: dict[str, int] = {}
    for step in steps:
        counts[step["status"]] = counts.get(step["status"], 0) + 1
    end = ended(connection, run_id)
    if end == "finished" and connection.get(closed_key(run_id)) is None:
        state = "finishing"  # the last job is closing the parent run and building the report
    elif end:
        state = end
    elif counts.get("finished", 0) == len(steps):
        state = "finishing"
    else:
        state = "running" if any(s["status"] in {"started", "finished"} for s in steps) else "queued"
    info = {"run_id": run_id, "workflow": record["workflow"], "queue": record["queue"],
            "experiment": record["experiment"], "manifest": record.get("manifest"), "state": state,
            "counts": counts, "steps": steps, "submitted_at": record.get("submitted_at")}
    return info


def cancel_workflow(connection, run_id: str, *, reason: str = "cancelled with 'gnomon workflow cancel'",
                    status: str = "KILLED", engine=None, stop_running: bool = True,
                    extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    """End the workflow: cancel its queued and deferred steps, stop the running ones (with
    ``stop_running``; their runs become KILLED) and end the parent run with ``status``.

    Returns what happened to each step that had not ended; raises :class:`FanoutError` if the
    workflow had already ended."""
    from rq.command import send_stop_job_command
    from rq.job import Job

    from .jobs import RESULT_TTL, serializer
    from .jobs import status as job_status

    record = load_record(connection, run_id)
    state = "canceled" if status == "KILLED" else "failed"
    if not mark_ended(connection, run_id, state, RESULT_TTL):
        raise FanoutError(f"workflow run '{run_id}' has already ended ({ended(connection, run_id)})")
    done: dict[str, str] = {}
    for name in record["order"]:
        job_id = record["jobs"][name]
        try:
            job = Job.fetch(job_id, connection=connection, serializer=serializer())
        except Exception:
            continue  # not enqueued yet (a failed submission) or expired
        current = job_status(job)
        if current in STEP_FINAL:
            continue
        if current == "started":
            if not stop_running:
                continue
            try:
                send_stop_job_command(connection, job_id, serializer=serializer())
                done[name] = "stop requested"
            except Exception as exc:  # the worker is gone: the abandoned-job cleanup will fail it
                done[name] = f"could not stop ({type(exc).__name__})"
        else:
            job.cancel()
            done[name] = "canceled"
    connection.set(closed_key(run_id), "1", ex=RESULT_TTL)
    for child in record.get("combinations", []):  # a sweep: its combinations' workflow runs end with it
        end_parent_run(child["run_id"], status, reason, engine=engine)
    end_parent_run(run_id, status, reason, engine=engine, extra_tags=extra_tags)
    return done


def end_parent_run(run_id: str, status: str, reason: str | None = None, *, engine=None,
                   extra_tags: dict[str, str] | None = None) -> bool:
    """Set the workflow's parent run to ``status`` if it is still RUNNING (tracking server from the engine
    or ``MLFLOW_TRACKING_URI``); returns whether it changed. Never raises."""
    try:
        import mlflow
        from mlflow.entities import RunTag

        client = engine.mlflow_client() if engine is not None else mlflow.MlflowClient()
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            return False
        tags = dict(extra_tags or {})
        if reason:
            tags["gnomon.error"] = reason[:5000]
        if tags:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        client.set_terminated(run_id, status=status)
        return True
    except Exception:
        return False


def wait_workflow(connection, run_id: str, timeout: float | None = None, poll: float = 0.5) -> dict[str, Any]:
    """Block until the workflow has ended and its parent run is closed; returns :func:`workflow_status`.

    While it runs only two small keys are polled (the full status reads every step's job)."""
    load_record(connection, run_id)  # an unknown id fails now
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        end = ended(connection, run_id)
        if end is not None and (end != "finished" or connection.get(closed_key(run_id)) is not None):
            info = workflow_status(connection, run_id)
            if not any(s["status"] == "started" for s in info["steps"]):
                return info
        if deadline is not None and time.monotonic() > deadline:
            info = workflow_status(connection, run_id)
            raise FanoutError(f"workflow run '{run_id}' did not end within {timeout:.0f} s (state {info['state']}, "
                              f"steps {info['counts']})")
        time.sleep(poll)
