"""Sweeps on RQ workers: one RQ job per distinct step (content key) across all combinations.

``gnomon workflow run NAME --sweep ... --queue Q`` validates every combination here
(:func:`~gnomon.core.workflows.sweep.plan_sweep`), creates the sweep's parent MLflow run and,
nested beneath it, one workflow run per combination (tagged ``gnomon.sweep.var.*``, with its
own ``workflow/plan.json``), exactly like a local sweep. It then hands :mod:`.schedule` one job
per content key across the combinations, ``depends_on`` the jobs of the keys it uses. A step
shared by several combinations therefore runs once, on some worker; its job records its run
on every combination's workflow run that uses it (status ``ran`` on the first, ``shared`` on
the others), which is where later steps of each combination, the reports and the
leaderboard find it.

The bookkeeping in Redis is :mod:`.fanout`'s, under the sweep's run id (one entry per key
job, plus the combinations' run ids), so ``gnomon workflow status|cancel SWEEP_RUN_ID`` and
``--wait`` work unchanged; a failed step ends the sweep and every combination's run FAILED.
The key job that completes the set enqueues :func:`~.stepjob.finish_workflow`, which closes every
combination's workflow run, then the sweep run, and builds the same leaderboard as a local sweep.
"""

from __future__ import annotations

import json

from .fanout import (
    DEFAULT_STEP_RETRIES,
    FanoutError,
    Submission,
    _create_parent_run,
    end_parent_run,
    shared_tracking_uri,
    submit_jobs,
)
from .schedule import step_jobs


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
    from ..workflows.sweep import SWEEP_PARENT_TAG, SWEEP_VAR_TAG

    shared_tracking_uri(engine)
    workflow = sweep.workflow
    sweep_id = _create_sweep_run(engine, sweep, queue_name, resume)
    combos = []
    try:
        for combination in sweep.combinations:
            tags = {SWEEP_PARENT_TAG: sweep_id, "mlflow.parentRunId": sweep_id,
                    **{f"{SWEEP_VAR_TAG}{k}": str(v) for k, v in combination.values.items()}}
            run_id = _create_parent_run(engine, combination.plan, queue_name, resume, extra_tags=tags,
                                        run_name=f"workflow:{workflow.name}[{combination.label}]")
            combos.append({"run_id": run_id, "values": combination.values, "label": combination.label,
                           "steps": [p.name for p in combination.plan.steps]})
    except Exception as exc:
        for combo in combos:
            end_parent_run(combo["run_id"], "FAILED", "sweep submission failed", engine=engine)
        end_parent_run(sweep_id, "FAILED", f"submission failed: {type(exc).__name__}: {exc}", engine=engine)
        raise FanoutError(f"could not submit sweep '{workflow.name}': {type(exc).__name__}: {exc}") from exc
    jobs = step_jobs([(combo["run_id"], c.plan) for combo, c in zip(combos, sweep.combinations, strict=True)],
                     job_name)
    return submit_jobs(engine, connection, sweep_id, jobs, workflow=workflow.name, queue_name=queue_name,
                       manifest_id=manifest_id, plugins_url=plugins_url, retries=retries, timeout=timeout,
                       resume=resume, result_ttl=result_ttl, record={"sweep": True, "combinations": combos},
                       what="sweep")


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
