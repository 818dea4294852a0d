"""What a worker runs for one step of a fanned-out workflow (:mod:`.fanout`), and the job that closes it.

:func:`run_step` reads the parent run from the tracking server, takes the run ids of the steps
it depends on from the parent's ``gnomon.step.NAME.run_id`` tags and their outputs from those
runs' tags, resolves its parameters exactly like the in-process runner, runs its task as a run
tagged as the parent's child, and records its run id on the parent. The step that completes
the workflow (or sweep: :mod:`.sweepfanout`) enqueues :func:`finish_workflow`.

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

#: the step statuses counted on a closed workflow run (metrics ``steps_ran`` ...)
STEP_COUNTS = ("ran", "cached", "shared")


def run_step(parent_run_id: str, step: dict[str, Any], variables: dict[str, Any], total: int, workflow: str,
             experiment: str | None = None, manifest_id: str | None = None, resume: bool = False,
             fanout: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one step's job (called by RQ in the work horse); returns its outcome as a dict.

    ``fanout`` (:mod:`.schedule`): ``run_id`` of the run the jobs end with (the workflow's parent run, or
    the sweep run), ``member`` (this job's name in its record) and ``consumers`` (``[{run, name}]``: every
    workflow run using this step, the first being ``parent_run_id``); the run is recorded on all of them.
    Without it the job is the step ``step['name']`` of ``parent_run_id`` alone."""
    from mlflow.entities import RunTag

    from ..errors import GnomonError, TaskFailedError
    from ..workflows.cache import CACHE_TAG, find_cached_run, outputs_from_tags, tag_name
    from ..workflows.runner import STEP_TAG, WORKFLOW_TAG, StepOutcome, resolve_params
    from ..workflows.spec import Step

    job = _current_job()
    connection = job.connection if job is not None else None
    name = step["name"]
    attempts = int((job.meta.get("attempts") if job else 0) or 0) + 1
    started = {"function_started_at": time.time(), "attempts": attempts, "worker": job.worker_name if job else None}
    if job is not None:  # saved with the engine's record below (one Redis write), or with the skip
        job.meta.update(started)
    fanout = fanout or {"run_id": parent_run_id, "member": name, "consumers": [{"run": parent_run_id, "name": name}]}
    control = fanout["run_id"]  # the Redis record, and the run that ends on failure
    consumers, member = fanout["consumers"], fanout["member"]
    if connection is not None and ended(connection, control):
        return _skipped(job, name, ended(connection, control))
    engine = job_engine(job, manifest_id, experiment, needs=step["task"])
    if fanout.get("experiment_id"):
        engine.use_experiment_id(fanout["experiment_id"])  # the submitter resolved it: no lookup per job
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
            if len(consumers) > 1:  # the earlier attempt may have died between recording on one run and the next
                _record_all(client, consumers, prior, ptags.get(f"gnomon.step.{tag_name(name)}.status"), RunTag)
            return _finished(job, connection, control, outcome, total, member)
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
            return _finished(job, connection, control, outcome, total, member)
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
    return _finished(job, connection, control, outcome, total, member)


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


def _finished(job, connection, control_run_id: str, outcome, total: int, member: str) -> dict[str, Any]:
    """Record the outcome; the job that completes the workflow (or sweep) enqueues the job that closes it."""
    _save(job, run_id=outcome.run_id, outcome=outcome.status, error=None)
    if connection is not None:
        with connection.pipeline() as pipe:
            pipe.sadd(done_key(control_run_id), member)
            pipe.expire(done_key(control_run_id), 7 * 24 * 3600)
            pipe.scard(done_key(control_run_id))
            count = pipe.execute()[-1]
        if count >= total and connection.set(done_key(control_run_id) + ":finisher", "1", nx=True,
                                             ex=7 * 24 * 3600):
            _enqueue_finisher(job, control_run_id)
    return outcome.to_dict()


def _enqueue_finisher(job, control_run_id: str) -> None:
    from .jobs import RESULT_TTL, queue

    queue(job.connection, job.origin).enqueue(
        FINISH_FUNCTION, kwargs={"parent_run_id": control_run_id, "experiment": job.meta.get("experiment"),
                                 "manifest_id": job.meta.get("manifest")},
        job_timeout=-1, result_ttl=RESULT_TTL, failure_ttl=RESULT_TTL, at_front=True,
        description=f"gnomon finish workflow {job.meta.get('workflow')} ({control_run_id})",
        meta={"kind": "finish", "task": job.meta.get("workflow"), "workflow_run": control_run_id,
              "experiment": job.meta.get("experiment")})


def finish_workflow(parent_run_id: str, experiment: str | None = None,
                    manifest_id: str | None = None) -> dict[str, Any]:
    """Close a workflow (or sweep) whose jobs have all finished.

    A workflow: metrics and ``workflow/steps.json`` on its parent run, status FINISHED, then its report.
    A sweep: the same on every combination's workflow run, then the sweep run (metrics, FINISHED) and
    its leaderboard. Both are logged like a local run's."""
    from mlflow.entities import Metric

    from .jobs import RESULT_TTL

    job = _current_job()
    connection = job.connection
    record = load_record(connection, parent_run_id)
    if not mark_ended(connection, parent_run_id, "finished", RESULT_TTL):
        return {"run_id": parent_run_id, "status": ended(connection, parent_run_id)}
    engine = job_engine(job, manifest_id, experiment)
    client = engine.mlflow_client()
    wall = time.time() - record["submitted_at"]
    now = int(time.time() * 1000)
    result: dict[str, Any] = {"run_id": parent_run_id, "status": "FINISHED", "wall_time_s": round(wall, 3)}
    sweep = bool(record.get("sweep"))
    if sweep:
        totals = dict.fromkeys(STEP_COUNTS, 0)
        for combo in record["combinations"]:
            for k, n in _close_run(client, combo["run_id"], combo["steps"], now).items():
                totals[k] += n
        client.log_batch(parent_run_id, metrics=[Metric("gnomon_wall_time_s", wall, now, 0),
                                                 *(Metric(f"steps_{k}", n, now, 0) for k, n in totals.items())])
        client.set_terminated(parent_run_id, status="FINISHED")
        result.update(totals)
    else:
        _close_run(client, parent_run_id, record["order"], now, jobs=record["jobs"],
                   metrics=[Metric("gnomon_wall_time_s", wall, now, 0)])
    what = "leaderboard" if sweep else "report"
    result[what] = None
    try:  # the runs are done; a report problem must not lose them
        if sweep:
            from ..workflows.leaderboard import build_leaderboard

            built = build_leaderboard(engine, parent_run_id, log=True)
            result[what] = built is not None
        else:
            from ..workflows.report import build_report

            built = build_report(engine, parent_run_id, log=True)
            result[what] = str(built.artifact_uri) if built is not None else None
    except Exception as exc:
        _save(job, error=redact(f"{what} not built: {type(exc).__name__}: {exc}"))
    connection.set(closed_key(parent_run_id), "1", ex=RESULT_TTL)
    _save(job, run_id=parent_run_id)
    return result


def _close_run(client, run_id: str, names: list[str], now: int, *, jobs: dict[str, str] | None = None,
               metrics: list | None = None) -> dict[str, int]:
    """End one workflow run FINISHED: its step counts (and ``metrics``) and ``workflow/steps.json``
    from the step tags its jobs recorded; returns the counts."""
    from mlflow.entities import Metric

    from ..workflows.cache import tag_name

    tags = client.get_run(run_id).data.tags
    steps = [{"name": n, "status": tags.get(f"gnomon.step.{tag_name(n)}.status", "not run"),
              "run_id": tags.get(f"gnomon.step.{tag_name(n)}.run_id") or None,
              **({"job": jobs[n]} if jobs else {})} for n in names]
    counts = {k: sum(s["status"] == k for s in steps) for k in STEP_COUNTS}
    client.log_batch(run_id, metrics=[*(metrics or []), *(Metric(f"steps_{k}", n, now, 0) for k, n in counts.items())])
    client.log_dict(run_id, {"steps": steps}, "workflow/steps.json")
    client.set_terminated(run_id, status="FINISHED")
    return counts


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
