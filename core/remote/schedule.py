"""The one scheduler of steps on RQ workers: planned steps grouped into jobs, enqueued with ``depends_on``.

A workflow on workers (:mod:`.fanout`) and a sweep on workers (:mod:`.sweepfanout`) differ only
in how planned steps map to jobs and which workflow runs receive each step's run:

- a workflow: one job per step (named like the step), recorded on the workflow's parent run;
- a sweep: one job per content key across all combinations (named ``step@key``), recorded on
  every combination's workflow run that has a step with that key.

:func:`step_jobs` builds the jobs from ``(workflow run id, plan)`` pairs and a ``job_name``
function, the only thing that differs; :func:`enqueue_jobs` writes the Redis record and enqueues
each job once the jobs it depends on exist. :func:`~.stepjob.run_step` runs any of them the same
way, and :func:`~.stepjob.finish_workflow` closes either.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

STEP_FUNCTION = "gnomon.core.remote.stepjob.run_step"


@dataclass
class StepJob:
    """One job: the planned step it runs and every (workflow run, step name) that uses its run.

    Attributes:
        name: the job's name in the Redis record and ``workflow status``.
        planned: the :class:`~gnomon.core.workflows.plan.PlannedStep` it runs (of its first consumer).
        variables: the workflow variables of its first consumer.
        depends_on: names of the jobs it waits for.
        consumers: ``[{"run": workflow run id, "name": step name}]``; the first is where its inputs are read.
    """

    name: str
    planned: Any
    variables: dict[str, Any]
    depends_on: list[str]
    consumers: list[dict[str, str]] = field(default_factory=list)


def step_jobs(runs: Iterable[tuple[str, Any]], job_name: Callable[[Any], str]) -> list[StepJob]:
    """Group the steps of ``runs`` (``(workflow run id, Plan)``) into jobs named by ``job_name(planned)``.

    Steps with the same job name are one job, run once; the jobs come in a valid run order
    (the first plan's order, later plans' new steps after it)."""
    jobs: dict[str, StepJob] = {}
    for run_id, plan in runs:
        names = {p.name: job_name(p) for p in plan.steps}
        for planned in plan.steps:
            name = names[planned.name]
            if name not in jobs:
                jobs[name] = StepJob(name=name, planned=planned, variables=plan.variables,
                                     depends_on=list(dict.fromkeys(names[d] for d in planned.depends_on)))
            jobs[name].consumers.append({"run": run_id, "name": planned.name})
    return list(jobs.values())


def enqueue_jobs(connection, control_run_id: str, jobs: list[StepJob], *, workflow: str, queue_name: str,
                 experiment: str, manifest_id: str | None, plugins_url: str | None, retries: int,
                 timeout: int | None, resume: bool, ttl: int, record: dict[str, Any] | None = None,
                 experiment_id: str | None = None) -> dict[str, str]:
    """Write the Redis record of ``control_run_id`` (the run that ends with the jobs) and enqueue ``jobs``.

    ``record`` adds entries to the record (a sweep's combinations); ``experiment_id`` (of ``experiment``, as the
    submitter resolved it) spares each job the lookup. Returns ``{job name: RQ job id}``.
    Raises what enqueueing raised (the caller cancels what was enqueued)."""
    from .fanout import record_key
    from .jobs import queue

    job_ids = {job.name: uuid.uuid4().hex for job in jobs}
    connection.set(record_key(control_run_id), json.dumps({
        "workflow": workflow, "queue": queue_name, "experiment": experiment, "manifest": manifest_id,
        "submitted_at": time.time(), "order": [job.name for job in jobs], "jobs": job_ids, "retries": retries,
        **(record or {})}), ex=ttl)
    q = queue(connection, queue_name)
    for job in jobs:  # run order: every dependency's job exists before its dependents'
        _enqueue(q, job, job_ids, control_run_id, len(jobs), workflow, experiment, manifest_id, plugins_url,
                 resume, timeout, ttl, retries, experiment_id)
    return job_ids


def _enqueue(q, job: StepJob, job_ids: dict[str, str], control_run_id: str, total: int, workflow: str,
             experiment: str, manifest_id: str | None, plugins_url: str | None, resume: bool,
             timeout: int | None, ttl: int, retries: int, experiment_id: str | None = None):
    from rq import Callback, Retry

    step = job.planned.step
    shared = len(job.consumers)
    meta = {"kind": "step", "task": step.task, "step": job.name, "workflow": workflow, "workflow_run": control_run_id,
            "params": step.params, "key": job.planned.key, "manifest": manifest_id, "plugins_url": plugins_url,
            "experiment": experiment, "submitted_at": time.time(), "retries": retries, "combinations": shared}
    return q.enqueue(
        STEP_FUNCTION,
        kwargs={"parent_run_id": job.consumers[0]["run"], "step": {**job.planned.to_dict(), "index": step.index},
                "variables": job.variables, "total": total, "workflow": workflow, "experiment": experiment,
                "manifest_id": manifest_id, "resume": resume,
                "fanout": {"run_id": control_run_id, "member": job.name, "consumers": job.consumers,
                           **({"experiment_id": experiment_id} if experiment_id else {})}},
        job_id=job_ids[job.name],
        depends_on=[job_ids[d] for d in job.depends_on] or None,
        job_timeout=timeout if timeout else -1, result_ttl=ttl, failure_ttl=ttl,
        retry=Retry(max=retries) if retries > 0 else None,
        description=f"gnomon step {workflow}/{step.name} ({step.task}"
                    + (f", {shared} combinations)" if shared > 1 else ")"),
        on_failure=Callback("gnomon.core.remote.stepjob.on_step_failure"),
        on_stopped=Callback("gnomon.core.remote.stepjob.on_step_stopped"),
        meta=meta,
    )
