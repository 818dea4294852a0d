"""What a worker runs for one step of a fanned-out workflow (:mod:`.fanout`), and the job that closes it.

:func:`run_step` reads the parent run from the tracking server, takes the run ids of the steps
it depends on from the parent's ``gnomon.step.NAME.run_id`` tags and their outputs from those
runs' tags, resolves its parameters exactly like the in-process runner, runs its task as a run
tagged as the parent's child, and records its run id on the parent. The step that completes
the workflow enqueues :func:`finish_workflow`.

Failures: a task that raises fails its job for good (no retry: it would raise again) and ends
the workflow FAILED, cancelling the steps still waiting. A job whose worker died is retried
(``retries`` of the submission) by RQ's abandoned-job cleanup; a retry whose earlier attempt had
already recorded a finished run reuses it instead of running the task again.
"""

from __future__ import annotations

import time
from typing import Any

from ..redact import redact
from .fanout import (
    FINISH_FUNCTION,
    FanoutError,
    cancel_workflow,
    closed_key,
    done_key,
    end_parent_run,
    ended,
    load_record,
    mark_ended,
)
from .worker import _current_job, _save, job_engine, mark_runs_failed


def run_step(parent_run_id: str, step: dict[str, Any], variables: dict[str, Any], total: int, workflow: str,
             experiment: str | None = None, manifest_id: str | None = None, resume: bool = False,
             sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one step (called by RQ in the work horse); returns its outcome as a dict.

    ``sweep`` (a sweep's key job, :mod:`.sweepfanout`): ``run_id`` of the sweep, ``member`` (this job's
    name in its record) and ``consumers`` (``[{run, name}]``: every combination's workflow run using
    this step, the first being ``parent_run_id``); the run is recorded on all of them."""
    from mlflow.entities import RunTag

    from ..errors import GnomonError, TaskFailedError
    from ..workflows.cache import CACHE_TAG, find_cached_run, outputs_from_tags, tag_name
    from ..workflows.runner import STEP_TAG, WORKFLOW_TAG, StepOutcome, resolve_params
    from ..workflows.spec import Step

    job = _current_job()
    connection = job.connection if job is not None else None
    name = step["name"]
    attempts = int((job.meta.get("attempts") if job else 0) or 0) + 1
    _save(job, function_started_at=time.time(), attempts=attempts, worker=job.worker_name if job else None)
    control = sweep["run_id"] if sweep else parent_run_id  # the Redis record and the run that ends on failure
    consumers = sweep["consumers"] if sweep else [{"run": parent_run_id, "name": name}]
    member = sweep["member"] if sweep else name
    if connection is not None and ended(connection, control):
        return _skipped(job, name, ended(connection, control))
    engine = job_engine(job, manifest_id, experiment, needs=step["task"])
    client = engine.mlflow_client()
    ptags: dict[str, str] = {}
    if step["depends_on"] or attempts > 1:  # a first attempt of a step that uses no other needs no read
        parent = client.get_run(parent_run_id)
        if parent.info.status != "RUNNING":
            return _skipped(job, name, parent.info.status.lower())
        ptags = parent.data.tags
    spec = Step(name=name, task=step["task"], params=step["params"], report=step.get("report") or {},
                index=step.get("index", 0), base=step.get("base") or name, matrix=step.get("matrix") or {})
    key = step["key"]
    prior = ptags.get(f"gnomon.step.{tag_name(name)}.run_id")
    if prior and ptags.get(f"gnomon.step.{tag_name(name)}.status") in {"ran", "cached"}:
        # an earlier attempt finished the run, then its worker died before RQ heard of it
        run = client.get_run(prior)
        if run.info.status == "FINISHED":
            outcome = StepOutcome(name=name, task=spec.task, status="cached", run_id=prior, cache_key=key,
                                  outputs=outputs_from_tags(run.data.tags), report=dict(spec.report))
            if sweep:  # the earlier attempt may have died between recording on one combination and the next
                _record_all(client, consumers, prior, ptags.get(f"gnomon.step.{tag_name(name)}.status"), RunTag)
            return _finished(job, connection, control, outcome, total, member, sweep is not None)
    done: dict[str, StepOutcome] = {}
    for dep in step["depends_on"]:
        dep_run = ptags.get(f"gnomon.step.{tag_name(dep)}.run_id")
        if not dep_run:
            raise FanoutError(f"step '{name}': the step it uses, '{dep}', has no finished run on the parent run "
                              f"{parent_run_id}")
        run = client.get_run(dep_run)
        done[dep] = StepOutcome(name=dep, task=run.data.tags.get("gnomon.task", ""), status="ran", run_id=dep_run,
                                outputs=outputs_from_tags(run.data.tags))
    inputs = {dep: done[dep].run_id for dep in step["depends_on"]}
    task = engine.task(spec.task)
    try:
        # a worker is a fresh process: the check runs here (again), and hands what it loaded to the run
        values = engine.validate(task, resolve_params(spec, variables, done), keep_checks=True)
    except GnomonError as exc:
        _record(client, parent_run_id, name, None, "failed", RunTag)
        _save(job, error=redact(f"step '{name}': {exc}"))
        raise
    if resume:
        cached = find_cached_run(client, engine.ensure_tracking(), key)
        if cached is not None:
            outcome = StepOutcome(name=name, task=task.name, status="cached", run_id=cached.info.run_id,
                                  cache_key=key, params=values, outputs=outputs_from_tags(cached.data.tags),
                                  metrics=dict(cached.data.metrics), inputs=inputs, report=dict(spec.report))
            _record_all(client, consumers, outcome.run_id, "cached", RunTag)
            return _finished(job, connection, control, outcome, total, member, sweep is not None)
    tags = {STEP_TAG: name, WORKFLOW_TAG: workflow, CACHE_TAG: key, "mlflow.parentRunId": parent_run_id,
            "gnomon.workflow.run_id": parent_run_id, "gnomon.job_id": job.id if job else "",
            "gnomon.queue": job.origin if job else "",
            "gnomon.manifest": (job.meta.get("pulled_manifest") if job else "") or ""}
    try:
        result = engine.run(task, values, validated=True, run_name=name, tags=tags)
    except TaskFailedError as exc:
        _record(client, parent_run_id, name, exc.run_id, "failed", RunTag)
        _save(job, run_id=exc.run_id, error=redact(exc))
        raise
    _record_all(client, consumers, result.run_id, "ran", RunTag)
    outcome = StepOutcome(name=name, task=task.name, status="ran", run_id=result.run_id, cache_key=key,
                          params=values, outputs=dict(result.outputs), metrics=dict(result.metrics), inputs=inputs,
                          duration_s=result.duration_s, report=dict(spec.report))
    return _finished(job, connection, control, outcome, total, member, sweep is not None)


def _record_all(client, consumers: list[dict[str, str]], run_id: str | None, status: str, RunTag) -> None:
    """Record the step's run on every workflow run that uses it: ``status`` on the first, ``shared`` on the others
    (as a local sweep records a step run for an earlier combination)."""
    for i, consumer in enumerate(consumers):
        _record(client, consumer["run"], consumer["name"], run_id, status if i == 0 else "shared", RunTag)


def _record(client, parent_run_id: str, name: str, run_id: str | None, status: str, RunTag) -> None:
    """The step's run and status on the parent run: how later steps (and the report) find it."""
    from ..workflows.cache import tag_name

    client.log_batch(parent_run_id, tags=[RunTag(f"gnomon.step.{tag_name(name)}.run_id", run_id or ""),
                                          RunTag(f"gnomon.step.{tag_name(name)}.status", status)])


def _skipped(job, name: str, why: str | None) -> dict[str, Any]:
    _save(job, outcome="skipped", error=None)
    return {"name": name, "status": "skipped", "reason": f"the workflow has ended ({why})"}


def _finished(job, connection, parent_run_id: str, outcome, total: int, member: str | None = None,
              sweep: bool = False) -> dict[str, Any]:
    """Record the outcome; the step that completes the workflow (or sweep) enqueues the job that closes it."""
    _save(job, run_id=outcome.run_id, outcome=outcome.status, error=None)
    if connection is not None:
        with connection.pipeline() as pipe:
            pipe.sadd(done_key(parent_run_id), member or outcome.name)
            pipe.expire(done_key(parent_run_id), 7 * 24 * 3600)
            pipe.scard(done_key(parent_run_id))
            count = pipe.execute()[-1]
        if count >= total and connection.set(done_key(parent_run_id) + ":finisher", "1", nx=True,
                                             ex=7 * 24 * 3600):
            _enqueue_finisher(job, parent_run_id, sweep)
    return outcome.to_dict()


def _enqueue_finisher(job, parent_run_id: str, sweep: bool = False) -> None:
    from .jobs import RESULT_TTL, queue

    q = queue(job.connection, job.origin)
    if sweep:
        q.enqueue("gnomon.core.remote.sweepfanout.finish_sweep",
                  kwargs={"sweep_run_id": parent_run_id, "experiment": job.meta.get("experiment"),
                          "manifest_id": job.meta.get("manifest")},
                  job_timeout=-1, result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL, at_front=True,
                  description=f"gnomon finish sweep {job.meta.get('workflow')} ({parent_run_id})",
                  meta={"kind": "finish", "task": job.meta.get("workflow"), "workflow_run": parent_run_id,
                        "experiment": job.meta.get("experiment")})
        return
    q.enqueue(FINISH_FUNCTION, kwargs={"parent_run_id": parent_run_id,
                                       "experiment": job.meta.get("experiment"),
                                       "manifest_id": job.meta.get("manifest")},
              job_timeout=-1, result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL, at_front=True,
              description=f"gnomon finish workflow {job.meta.get('workflow')} ({parent_run_id})",
              meta={"kind": "finish", "task": job.meta.get("workflow"), "workflow_run": parent_run_id,
                    "experiment": job.meta.get("experiment")})


def finish_workflow(parent_run_id: str, experiment: str | None = None,
                    manifest_id: str | None = None) -> dict[str, Any]:
    """Close a workflow whose steps have all finished: metrics and ``workflow/steps.json`` on the parent
    run, status FINISHED, then the report (logged on the parent run like a local run's)."""
    from mlflow.entities import Metric

    from .jobs import RESULT_TTL

    job = _current_job()
    connection = job.connection
    record = load_record(connection, parent_run_id)
    if not mark_ended(connection, parent_run_id, "finished", RESULT_TTL):
        return {"run_id": parent_run_id, "status": ended(connection, parent_run_id)}
    engine = job_engine(job, manifest_id, experiment)
    client = engine.mlflow_client()
    from ..workflows.cache import tag_name

    tags = client.get_run(parent_run_id).data.tags
    steps = [{"name": n, "status": tags.get(f"gnomon.step.{tag_name(n)}.status", "not run"),
              "run_id": tags.get(f"gnomon.step.{tag_name(n)}.run_id") or None, "job": record["jobs"][n]}
             for n in record["order"]]
    wall = time.time() - record["submitted_at"]
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[
        Metric("gnomon_wall_time_s", wall, now, 0),
        Metric("steps_ran", sum(s["status"] == "ran" for s in steps), now, 0),
        Metric("steps_cached", sum(s["status"] == "cached" for s in steps), now, 0),
        Metric("steps_shared", sum(s["status"] == "shared" for s in steps), now, 0)])
    client.log_dict(parent_run_id, {"steps": steps}, "workflow/steps.json")
    client.set_terminated(parent_run_id, status="FINISHED")
    report = None
    try:
        from ..workflows.report import build_report

        report = build_report(engine, parent_run_id, log=True)
    except Exception as exc:  # the steps are done; a report problem must not lose them
        _save(job, error=redact(f"report not built: {type(exc).__name__}: {exc}"))
    connection.set(closed_key(parent_run_id), "1", ex=RESULT_TTL)
    _save(job, run_id=parent_run_id)
    return {"run_id": parent_run_id, "status": "FINISHED", "wall_time_s": round(wall, 3),
            "report": str(report.artifact_uri) if report is not None else None}


def on_step_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback of a step: a dead worker's step is retried; any other failure ends the workflow."""
    name = getattr(exc_type, "__name__", str(exc_type))
    parent_run_id = (job.meta or {}).get("workflow_run")
    step = (job.meta or {}).get("step")
    if name == "AbandonedJobError":
        retry = (job.retries_left or 0) > 0
        job.meta["error"] = ("the worker died while running this step (AbandonedJobError); "
                             + ("it was re-enqueued" if retry else "no retries left"))
        _try(job.save_meta)
        mark_runs_failed(job.id, "worker died (AbandonedJobError)")
        if retry:
            return
    else:
        job.retries_left = 0  # the task raised: running it again would raise again
        if not job.meta.get("error"):
            job.meta["error"] = f"{name}: {exc_value}"[:2000]
            _try(job.save_meta)
    if not parent_run_id or ended(connection, parent_run_id):
        return
    reason = (job.meta or {}).get("error") or f"{name}: {exc_value}"
    from ..workflows.cache import tag_name

    _try(lambda: cancel_workflow(connection, parent_run_id, reason=f"step '{step}' failed: {reason}"[:5000],
                                 status="FAILED", stop_running=False,
                                 extra_tags={"gnomon.failed_step": step or "",
                                             f"gnomon.step.{tag_name(step or '')}.status": "failed"}))


def on_step_stopped(job, connection) -> None:
    """RQ stopped callback: the step's run is KILLED; a step stopped on its own ends its workflow KILLED."""
    mark_runs_failed(job.id, "stopped by 'gnomon workflow cancel' or 'gnomon jobs cancel'", status="KILLED")
    parent_run_id = (job.meta or {}).get("workflow_run")
    if not parent_run_id:
        return
    if ended(connection, parent_run_id):
        end_parent_run(parent_run_id, "KILLED" if ended(connection, parent_run_id) == "canceled" else "FAILED")
        return
    _try(lambda: cancel_workflow(connection, parent_run_id, reason=f"step '{job.meta.get('step')}' was stopped"))


def _try(fn) -> None:
    try:
        fn()
    except Exception:  # callbacks must never break RQ's own bookkeeping
        pass
