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

The scheduler works on a list of concrete steps (:class:`PlannedStep`: a name, a task, params
that may hold references, the names of the steps it depends on), so any front end that
expands a workflow into such a list (matrix steps, sweeps) fans out the same way.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from . import RemoteError

STEP_FUNCTION = "gnomon.core.remote.stepjob.run_step"
FINISH_FUNCTION = "gnomon.core.remote.stepjob.finish_workflow"
KEY_PREFIX = "gnomon:workflow:"
DEFAULT_STEP_RETRIES = 2
#: job states that will not change any more (RQ's, plus ``skipped`` for steps of an ended workflow)
STEP_FINAL = {"finished", "failed", "stopped", "canceled"}


class FanoutError(RemoteError):
    """A fanned-out workflow could not be submitted, found or cancelled."""


@dataclass
class PlannedStep:
    """One concrete step to run as a job: what the scheduler needs, whatever file format produced it."""

    name: str
    task: str
    params: dict[str, Any]
    depends_on: list[str]
    report: dict[str, str] = field(default_factory=dict)
    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_steps(workflow) -> list[PlannedStep]:
    """The workflow's steps as concrete steps with their dependencies, in a valid (file) order."""
    from ..workflows.refs import step_dependencies

    steps = []
    for step in workflow.steps:
        depends = getattr(step, "depends_on", None)
        steps.append(PlannedStep(name=step.name, task=step.task, params=dict(step.params),
                                 depends_on=list(depends) if depends is not None else step_dependencies(step.params),
                                 report=dict(step.report), index=step.index))
    return steps


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


def submit_workflow(engine, connection, workflow, variables: dict[str, Any], *, queue_name: str,
                    manifest_id: str | None = None, plugins_url: str | None = None, retries: int = DEFAULT_STEP_RETRIES,
                    timeout: int | None = None, resume: bool = False, steps: list[PlannedStep] | None = None,
                    result_ttl: int | None = None) -> Submission:
    """Create the parent run and enqueue one job per step (the workflow must already be validated).

    Args:
        engine: the submitting engine (its experiment receives every run).
        connection: a Redis connection (:func:`gnomon.core.remote.jobs.connect`).
        workflow: the parsed workflow; ``steps`` overrides its step list (e.g. an expanded sweep).
        variables: the workflow variables after overrides.
        retries: how many times a step whose worker died is re-run (a step whose task raised is not).
        resume: a step whose cache key matches a finished run in the experiment reuses that run.
    """

    from .jobs import RESULT_TTL, queue

    shared_tracking_uri(engine)
    ttl = result_ttl or RESULT_TTL
    planned = steps if steps is not None else plan_steps(workflow)
    names = {s.name for s in planned}
    for step in planned:
        unknown = [d for d in step.depends_on if d not in names]
        if unknown:
            raise FanoutError(f"step '{step.name}' depends on unknown step(s) {', '.join(unknown)}")
    run_id = _create_parent_run(engine, workflow, variables, planned, queue_name, resume)
    job_ids = {s.name: uuid.uuid4().hex for s in planned}
    record = {"workflow": workflow.name, "queue": queue_name, "experiment": engine.experiment,
              "manifest": manifest_id, "submitted_at": time.time(), "order": [s.name for s in planned],
              "jobs": job_ids, "retries": retries}
    connection.set(record_key(run_id), json.dumps(record), ex=ttl)
    q = queue(connection, queue_name)
    try:
        for step in _topological(planned):
            _enqueue_step(q, step, job_ids, run_id, workflow.name, variables, len(planned), engine.experiment,
                          manifest_id, plugins_url, resume, timeout, ttl, retries)
    except Exception as exc:
        cancel_workflow(connection, run_id, reason=f"submission failed: {type(exc).__name__}: {exc}",
                        status="FAILED", engine=engine)
        raise FanoutError(f"could not enqueue workflow '{workflow.name}': {type(exc).__name__}: {exc}") from exc
    return Submission(run_id=run_id, workflow=workflow.name, queue=queue_name, experiment=engine.experiment,
                      jobs=job_ids, manifest=manifest_id)


def _enqueue_step(q, step: PlannedStep, job_ids: dict[str, str], run_id: str, workflow: str,
                  variables: dict[str, Any], total: int, experiment: str, manifest_id: str | None,
                  plugins_url: str | None, resume: bool, timeout: int | None, ttl: int, retries: int):
    from rq import Callback, Retry

    meta = {"kind": "step", "task": step.task, "step": step.name, "workflow": workflow, "workflow_run": run_id,
            "params": step.params, "manifest": manifest_id, "plugins_url": plugins_url, "experiment": experiment,
            "submitted_at": time.time(), "retries": retries}
    return q.enqueue(
        STEP_FUNCTION,
        kwargs={"parent_run_id": run_id, "step": step.to_dict(), "variables": variables, "total": total,
                "workflow": workflow, "experiment": experiment, "manifest_id": manifest_id, "resume": resume},
        job_id=job_ids[step.name],
        depends_on=[job_ids[d] for d in step.depends_on] or None,
        job_timeout=timeout if timeout else -1, result_ttl=ttl, failure_ttl=ttl,
        retry=Retry(max=retries) if retries > 0 else None,
        description=f"gnomon step {workflow}/{step.name} ({step.task})",
        on_failure=Callback("gnomon.core.remote.stepjob.on_step_failure"),
        on_stopped=Callback("gnomon.core.remote.stepjob.on_step_stopped"),
        meta=meta,
    )


def _topological(steps: list[PlannedStep]) -> list[PlannedStep]:
    """``steps`` ordered so every step comes after the steps it depends on (a cycle is an error)."""
    by_name = {s.name: s for s in steps}
    order: list[PlannedStep] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(step: PlannedStep, path: list[str]) -> None:
        if state.get(step.name) == 2:
            return
        if state.get(step.name) == 1:
            raise FanoutError(f"steps depend on each other in a cycle: {' -> '.join(path + [step.name])}")
        state[step.name] = 1
        for dep in step.depends_on:
            visit(by_name[dep], path + [step.name])
        state[step.name] = 2
        order.append(step)

    for step in steps:
        visit(step, [])
    return order


def _create_parent_run(engine, workflow, variables: dict[str, Any], steps: list[PlannedStep], queue_name: str,
                       resume: bool) -> str:
    from .. import __version__
    from ..jsonable import jsonable
    from ..workflows.runner import PLAN_ARTIFACT, WORKFLOW_TAG, library_versions

    experiment_id = engine.ensure_tracking()
    client = engine.mlflow_client()
    from mlflow.entities import Param, RunTag

    tags = {
        WORKFLOW_TAG: workflow.name,
        "gnomon.workflow.source": workflow.source,
        "gnomon.workflow.sha256": workflow.digest,
        "gnomon.workflow.resume": str(resume).lower(),
        "gnomon.workflow.queue": queue_name,
        "gnomon.workflow.fanout": "true",
        "gnomon.version": __version__,
        "gnomon.versions": json.dumps(library_versions(), sort_keys=True),
    }
    run = client.create_run(experiment_id, run_name=f"workflow:{workflow.name}", tags=tags)
    run_id = run.info.run_id
    if variables:
        client.log_batch(run_id, params=[Param(f"var.{k}", str(v)) for k, v in variables.items()],
                         tags=[RunTag("gnomon.workflow.steps", str(len(steps)))])
    client.log_text(run_id, workflow.text, f"workflow/{workflow.name}.toml")
    plan = {"name": workflow.name, "description": workflow.description, "source": workflow.source,
            "variables": {k: jsonable(v) for k, v in variables.items()}, "report": workflow.report,
            "steps": [{"name": s.name, "task": s.task, "params": s.params, "report": s.report,
                       "depends_on": s.depends_on} for s in steps]}
    client.log_dict(run_id, plan, PLAN_ARTIFACT)
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
    """Block until the workflow has ended and its parent run is closed; returns :func:`workflow_status`."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        info = workflow_status(connection, run_id)
        if info["state"] in {"finished", "failed", "canceled"} and \
                not any(s["status"] == "started" for s in info["steps"]):
            return info
        if deadline is not None and time.monotonic() > deadline:
            raise FanoutError(f"workflow run '{run_id}' did not end within {timeout:.0f} s (state {info['state']}, "
                              f"steps {info['counts']})")
        time.sleep(poll)
