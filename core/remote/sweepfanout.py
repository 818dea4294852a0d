"""Sweeps on RQ workers: one RQ job per distinct step (content key) across all combinations.

``gnomon workflow run NAME --sweep ... --queue Q`` validates every combination here
(:func:`~gnomon.core.workflows.sweep.plan_sweep`), creates the sweep's parent MLflow run and,
nested beneath it, one workflow run per combination (tagged ``gnomon.sweep.var.*``, with its
own ``workflow/plan.json``), exactly like a local sweep. It then enqueues one job per content
key (:meth:`SweepPlan.unique_steps`), ``depends_on`` the jobs of the keys it uses. A step
shared by several combinations therefore runs once, on some worker; its job records its run
on every combination's workflow run that uses it (status ``ran`` on the first, ``shared`` on
the others), which is where later steps of each combination, the reports and the
leaderboard find it.

The bookkeeping in Redis is :mod:`.fanout`'s, under the sweep's run id (one entry per key
job, plus the combinations' run ids), so ``gnomon workflow status|cancel SWEEP_RUN_ID`` and
``--wait`` work unchanged; a failed step ends the sweep and every combination's run FAILED.
The key job that completes the set enqueues :func:`finish_sweep`, which closes every
combination's workflow run, then the sweep run, and builds the same leaderboard as a local sweep.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .fanout import (
    DEFAULT_STEP_RETRIES,
    STEP_FUNCTION,
    FanoutError,
    Submission,
    _create_parent_run,
    cancel_workflow,
    closed_key,
    ended,
    load_record,
    mark_ended,
    record_key,
    shared_tracking_uri,
)

FINISH_SWEEP_FUNCTION = "gnomon.core.remote.sweepfanout.finish_sweep"


def job_name(planned) -> str:
    """The name of a key's job in ``workflow status``: the step's name and the start of its key."""
    return f"{planned.name}@{planned.key[:8]}"


def submit_sweep(engine, connection, sweep, *, queue_name: str, manifest_id: str | None = None,
                 plugins_url: str | None = None, retries: int = DEFAULT_STEP_RETRIES, timeout: int | None = None,
                 resume: bool = False, result_ttl: int | None = None) -> Submission:
    """Create the sweep run and its combinations' workflow runs, then enqueue one job per content key.

    Args:
        sweep: a validated :class:`~gnomon.core.workflows.sweep.SweepPlan`.
        Others as :func:`~gnomon.core.remote.fanout.submit_workflow`.
    """
    from .jobs import RESULT_TTL, queue

    shared_tracking_uri(engine)
    ttl = result_ttl or RESULT_TTL
    workflow = sweep.workflow
    sweep_id = _create_sweep_run(engine, sweep, queue_name, resume)
    combos = []
    consumers: dict[str, list[dict[str, str]]] = {}
    variables: dict[str, dict[str, Any]] = {}
    try:
        from ..workflows.sweep import SWEEP_PARENT_TAG, SWEEP_VAR_TAG

        for combination in sweep.combinations:
            tags = {SWEEP_PARENT_TAG: sweep_id, "mlflow.parentRunId": sweep_id,
                    **{f"{SWEEP_VAR_TAG}{k}": str(v) for k, v in combination.values.items()}}
            run_id = _create_parent_run(engine, combination.plan, queue_name, resume, extra_tags=tags,
                                        run_name=f"workflow:{workflow.name}[{combination.label}]")
            combos.append({"run_id": run_id, "values": combination.values, "label": combination.label,
                           "steps": [p.name for p in combination.plan.steps]})
            for planned in combination.plan.steps:
                consumers.setdefault(planned.key, []).append({"run": run_id, "name": planned.name})
                variables.setdefault(planned.key, combination.variables)
    except Exception as exc:
        from .fanout import end_parent_run

        for combo in combos:
            end_parent_run(combo["run_id"], "FAILED", "sweep submission failed", engine=engine)
        end_parent_run(sweep_id, "FAILED", f"submission failed: {type(exc).__name__}: {exc}", engine=engine)
        raise FanoutError(f"could not submit sweep '{workflow.name}': {type(exc).__name__}: {exc}") from exc
    unique = sweep.unique_steps()
    names = {p.key: job_name(p) for p in unique}
    job_ids = {names[p.key]: uuid.uuid4().hex for p in unique}
    record = {"workflow": workflow.name, "queue": queue_name, "experiment": engine.experiment, "sweep": True,
              "manifest": manifest_id, "submitted_at": time.time(), "order": [names[p.key] for p in unique],
              "jobs": job_ids, "retries": retries, "combinations": combos}
    connection.set(record_key(sweep_id), json.dumps(record), ex=ttl)
    q = queue(connection, queue_name)
    try:
        for planned in unique:  # run order: every dependency's job exists before its dependents'
            _enqueue_key(q, planned, names, job_ids, sweep_id, consumers[planned.key], variables[planned.key],
                         len(unique), workflow.name, engine.experiment, manifest_id, plugins_url, resume, timeout,
                         ttl, retries)
    except Exception as exc:
        cancel_workflow(connection, sweep_id, reason=f"submission failed: {type(exc).__name__}: {exc}",
                        status="FAILED", engine=engine)
        raise FanoutError(f"could not enqueue sweep '{workflow.name}': {type(exc).__name__}: {exc}") from exc
    return Submission(run_id=sweep_id, workflow=workflow.name, queue=queue_name, experiment=engine.experiment,
                      jobs=job_ids, manifest=manifest_id)


def _enqueue_key(q, planned, names, job_ids, sweep_id, consumers, variables, total, workflow, experiment,
                 manifest_id, plugins_url, resume, timeout, ttl, retries):
    from rq import Callback, Retry

    step = planned.step
    name = names[planned.key]
    meta = {"kind": "step", "task": step.task, "step": name, "workflow": workflow, "workflow_run": sweep_id,
            "params": step.params, "key": planned.key, "manifest": manifest_id, "plugins_url": plugins_url,
            "experiment": experiment, "submitted_at": time.time(), "retries": retries,
            "combinations": len(consumers)}
    return q.enqueue(
        STEP_FUNCTION,
        kwargs={"parent_run_id": consumers[0]["run"], "step": {**planned.to_dict(), "index": step.index},
                "variables": variables, "total": total, "workflow": workflow, "experiment": experiment,
                "manifest_id": manifest_id, "resume": resume,
                "sweep": {"run_id": sweep_id, "member": name, "consumers": consumers}},
        job_id=job_ids[name],
        depends_on=[job_ids[names[k]] for k in dict.fromkeys(planned.inputs.values())] or None,
        job_timeout=timeout if timeout else -1, result_ttl=ttl, failure_ttl=ttl,
        retry=Retry(max=retries) if retries > 0 else None,
        description=f"gnomon sweep step {workflow}/{step.name} ({step.task}, {len(consumers)} combinations)",
        on_failure=Callback("gnomon.core.remote.stepjob.on_step_failure"),
        on_stopped=Callback("gnomon.core.remote.stepjob.on_step_stopped"),
        meta=meta,
    )


def _create_sweep_run(engine, sweep, queue_name: str, resume: bool) -> str:
    """The sweep's parent run, tagged and logged like a local sweep's (:func:`~gnomon.core.workflows.sweep.run_sweep`)."""
    from mlflow.entities import Param

    from ..workflows.runner import library_versions
    from ..workflows.sweep import SWEEP_TAG

    workflow = sweep.workflow
    axes = {k: list(v) for k, v in sweep.matrix.axes.items()}
    tags = {SWEEP_TAG: workflow.name, "gnomon.workflow.source": workflow.source,
            "gnomon.workflow.sha256": workflow.digest, "gnomon.sweep.axes": json.dumps(axes),
            "gnomon.workflow.resume": str(resume).lower(), "gnomon.workflow.queue": queue_name,
            "gnomon.versions": json.dumps(library_versions(), sort_keys=True)}
    experiment_id = engine.ensure_tracking()
    client = engine.mlflow_client()
    run_id = client.create_run(experiment_id, run_name=f"sweep:{workflow.name}", tags=tags).info.run_id
    client.log_batch(run_id, params=[Param(f"sweep.{k}", ",".join(str(v) for v in values)[:6000])
                                     for k, values in axes.items()])
    client.log_text(run_id, workflow.text, f"workflow/{workflow.name}.toml")
    client.log_dict(run_id, {"axes": axes, "exclude": list(sweep.matrix.exclude),
                             "combinations": [c.values for c in sweep.combinations],
                             "unique_steps": len(sweep.unique_steps()), "total_steps": sweep.total_steps},
                    "sweep/plan.json")
    return run_id


def finish_sweep(sweep_run_id: str, experiment: str | None = None, manifest_id: str | None = None) -> dict[str, Any]:
    """Close a sweep whose key jobs have all finished: every combination's workflow run (metrics and
    ``workflow/steps.json``, FINISHED), then the sweep run (metrics, FINISHED) and its leaderboard."""
    from mlflow.entities import Metric

    from ..workflows.cache import tag_name
    from .jobs import RESULT_TTL
    from .stepjob import _current_job, _save
    from .worker import job_engine

    job = _current_job()
    connection = job.connection
    record = load_record(connection, sweep_run_id)
    if not mark_ended(connection, sweep_run_id, "finished", RESULT_TTL):
        return {"run_id": sweep_run_id, "status": ended(connection, sweep_run_id)}
    engine = job_engine(job, manifest_id, experiment)
    client = engine.mlflow_client()
    now = int(time.time() * 1000)
    totals = {"ran": 0, "shared": 0, "cached": 0}
    for combo in record["combinations"]:
        tags = client.get_run(combo["run_id"]).data.tags
        steps = [{"name": n, "status": tags.get(f"gnomon.step.{tag_name(n)}.status", "not run"),
                  "run_id": tags.get(f"gnomon.step.{tag_name(n)}.run_id") or None} for n in combo["steps"]]
        counts = {k: sum(s["status"] == k for s in steps) for k in totals}
        for k, n in counts.items():
            totals[k] += n
        client.log_batch(combo["run_id"], metrics=[Metric(f"steps_{k}", n, now, 0) for k, n in counts.items()])
        client.log_dict(combo["run_id"], {"steps": steps}, "workflow/steps.json")
        client.set_terminated(combo["run_id"], status="FINISHED")
    wall = time.time() - record["submitted_at"]
    client.log_batch(sweep_run_id, metrics=[Metric("gnomon_wall_time_s", wall, now, 0),
                                            *(Metric(f"steps_{k}", n, now, 0) for k, n in totals.items())])
    client.set_terminated(sweep_run_id, status="FINISHED")
    board = None
    try:
        from ..workflows.leaderboard import build_leaderboard

        board = build_leaderboard(engine, sweep_run_id, log=True)
    except Exception as exc:  # the runs are done; a report problem must not lose them
        _save(job, error=f"leaderboard not built: {type(exc).__name__}: {exc}")
    connection.set(closed_key(sweep_run_id), "1", ex=RESULT_TTL)
    _save(job, run_id=sweep_run_id)
    return {"run_id": sweep_run_id, "status": "FINISHED", "wall_time_s": round(wall, 3), **totals,
            "leaderboard": board is not None}
