"""Running a workflow: one parent MLflow run, one nested child run per step, in one process.

The whole workflow is validated first (:func:`plan_workflow`, which also gives every
concrete step its content key); then steps run in order, each with its references
resolved from the earlier steps' results. The first failure marks its child run and the
parent run FAILED and raises :class:`WorkflowStepError` naming the step. With
``resume=True`` a step whose content key matches a finished run is skipped and that run's
id and outputs are used instead; a sweep passes ``shared`` so that a step already run for
an earlier combination is reused the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import GnomonError, ParamValidationError, TaskFailedError
from ..jsonable import jsonable
from .cache import CACHE_TAG, find_cached_run, outputs_from_tags, tag_name
from .plan import Plan, PlannedStep
from .refs import Ref, substitute
from .spec import Step, Workflow
from .validate import plan_workflow

WORKFLOW_TAG = "gnomon.workflow"
STEP_TAG = "gnomon.workflow.step"
PLAN_ARTIFACT = "workflow/plan.json"
STEPS_ARTIFACT = "workflow/steps.json"


class WorkflowStepError(GnomonError):
    """A step failed; the workflow stopped there and its parent run is FAILED."""

    def __init__(self, workflow: str, step: Step, parent_run_id: str, cause: BaseException,
                 child_run_id: str | None = None):
        self.workflow, self.step, self.parent_run_id, self.cause = workflow, step, parent_run_id, cause
        self.child_run_id = child_run_id
        reason = str(cause) if isinstance(cause, GnomonError) else f"{type(cause).__name__}: {cause}"
        super().__init__(
            f"workflow '{workflow}' stopped at step '{step.name}' (#{step.index + 1}, task '{step.task}'): "
            f"{reason}\nparent run {parent_run_id} marked FAILED; after fixing the cause, "
            "'gnomon workflow run ... --resume' re-runs only the steps that did not finish"
        )


@dataclass
class StepOutcome:
    """What happened to one step."""

    name: str
    task: str
    status: str  # "ran", "cached" (a finished run reused by --resume), "shared" (run earlier in this sweep) or "failed"
    run_id: str | None = None
    cache_key: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    report: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "task": self.task, "status": self.status, "run_id": self.run_id,
            "cache_key": self.cache_key, "inputs": self.inputs, "report": self.report,
            "params": {k: jsonable(v) for k, v in self.params.items()},
            "outputs": {k: jsonable(v) for k, v in self.outputs.items()},
            "duration_s": round(self.duration_s, 3),
        }


@dataclass
class WorkflowResult:
    """The parent run and every step's outcome."""

    workflow: str
    run_id: str
    experiment_id: str
    status: str
    steps: list[StepOutcome]
    variables: dict[str, Any]
    duration_s: float = 0.0
    report: Any = None

    @property
    def by_name(self) -> dict[str, StepOutcome]:
        return {s.name: s for s in self.steps}


def library_versions() -> dict[str, str]:
    """Installed versions of gnomon, TensorFlow, Keras, ART, MLflow and Python (no imports needed)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for label, dist in (("gnomon", "gnomon"), ("tensorflow", "tensorflow"), ("keras", "keras"),
                        ("art", "adversarial-robustness-toolbox"), ("mlflow", "mlflow"), ("numpy", "numpy")):
        try:
            out[label] = version(dist)
        except PackageNotFoundError:
            out[label] = "not installed"
    return out


class _Printer:
    """One line per step on stderr (silent when the engine draws no progress)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._console = None

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
        self._console.print(message)


def run_workflow(engine, workflow: Workflow, variables: dict[str, Any], *, resume: bool = False,
                 make_report: bool = True, report_dir=None,
                 on_step: Callable[[StepOutcome], None] | None = None, plan: Plan | None = None,
                 shared: dict[str, StepOutcome] | None = None, nested: bool = False,
                 extra_tags: dict[str, str] | None = None, run_name: str | None = None) -> WorkflowResult:
    """Validate, then run every step of ``workflow`` under one parent MLflow run.

    Args:
        engine: the :class:`~gnomon.core.engine.Engine` (its experiment holds all runs).
        workflow: the parsed workflow.
        variables: the workflow variables after ``-P`` overrides (:func:`apply_overrides`).
        resume: skip steps whose cache key matches a finished run in the experiment.
        make_report: build the results report at the end and log it on the parent run.
        report_dir: where to write the report (default: ``$GNOMON_HOME/reports/<run id>``).
        on_step: called after each step with its :class:`StepOutcome`.
        plan: the already validated plan (default: validate now with :func:`plan_workflow`).
        shared: ``{content key: outcome}`` of steps already run in this process (a sweep); a step
            whose key is there is not run again. Steps run here are added to it.
        nested: start the parent run nested under the active MLflow run (a sweep's parent).
        extra_tags, run_name: tags and run name for the parent run.

    Raises:
        WorkflowValidationError: before anything runs, listing every problem.
        WorkflowStepError: a step failed (the parent run is FAILED).
    """
    if plan is None:
        plan = plan_workflow(engine, workflow, variables)
    experiment_id = engine.ensure_tracking()

    import mlflow

    from .. import __version__

    say = _Printer(engine.show_progress)
    client = engine.mlflow_client()
    versions = library_versions()
    from ..environment import fingerprint_tags
    from ..lifecycle import Terminated, process_tags
    from ..redact import redact

    tags = {
        **process_tags(),
        **fingerprint_tags(),
        WORKFLOW_TAG: workflow.name,
        "gnomon.workflow.source": workflow.source,
        "gnomon.workflow.sha256": workflow.digest,
        "gnomon.workflow.resume": str(resume).lower(),
        "gnomon.version": __version__,
        "gnomon.versions": json.dumps(versions, sort_keys=True),
        **(extra_tags or {}),
    }
    outcomes: list[StepOutcome] = []
    started = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name or f"workflow:{workflow.name}", tags=tags,
                          nested=nested) as parent:
        parent_id = parent.info.run_id
        if variables:
            mlflow.log_params({f"var.{k}": str(v) for k, v in variables.items()})
        mlflow.log_text(workflow.text, f"workflow/{workflow.name}.toml")
        mlflow.log_dict(_plan(workflow, variables, plan), PLAN_ARTIFACT)
        say(f"[bold]workflow {workflow.name}[/bold]: {len(plan.steps)} steps, parent run {parent_id} "
            f"(experiment '{engine.experiment}')")
        try:
            for planned in plan.steps:
                outcome = _run_step(engine, client, experiment_id, workflow, planned, variables,
                                    {o.name: o for o in outcomes}, resume, say, shared, len(plan.steps),
                                    checked=planned.name in plan.checked)
                outcomes.append(outcome)
                if shared is not None and outcome.status in ("ran", "cached"):
                    shared[planned.key] = outcome
                mlflow.set_tags({f"gnomon.step.{tag_name(planned.name)}.run_id": outcome.run_id or "",
                                 f"gnomon.step.{tag_name(planned.name)}.status": outcome.status})
                if on_step is not None:
                    on_step(outcome)
        except (KeyboardInterrupt, Terminated) as exc:
            mlflow.set_tag("gnomon.error", "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc))
            mlflow.log_dict({"steps": [o.to_dict() for o in outcomes]}, STEPS_ARTIFACT)
            mlflow.end_run(status="KILLED")
            raise
        except WorkflowStepError as exc:
            failed = StepOutcome(name=exc.step.name, task=exc.step.task, status="failed", run_id=exc.child_run_id,
                                 report=dict(exc.step.report))
            mlflow.set_tags({"gnomon.error": redact(exc)[:5000], "gnomon.failed_step": exc.step.name,
                             f"gnomon.step.{tag_name(exc.step.name)}.run_id": exc.child_run_id or "",
                             f"gnomon.step.{tag_name(exc.step.name)}.status": "failed"})
            mlflow.log_dict({"steps": [o.to_dict() for o in outcomes + [failed]]}, STEPS_ARTIFACT)
            mlflow.end_run(status="FAILED")
            raise
        duration = time.perf_counter() - started
        mlflow.log_metric("gnomon_wall_time_s", duration)
        mlflow.log_metrics({"steps_ran": sum(o.status == "ran" for o in outcomes),
                            "steps_cached": sum(o.status == "cached" for o in outcomes),
                            "steps_shared": sum(o.status == "shared" for o in outcomes)})
        mlflow.log_dict({"steps": [o.to_dict() for o in outcomes]}, STEPS_ARTIFACT)
    result = WorkflowResult(workflow=workflow.name, run_id=parent_id, experiment_id=experiment_id,
                            status="FINISHED", steps=outcomes, variables=dict(variables), duration_s=duration)
    if make_report:  # after the parent run ended, so the report shows its final status
        result.report = _report_or_warn(engine, parent_id, report_dir, say)
    return result


def _report_or_warn(engine, run_id: str, report_dir, say):
    from .report import build_report

    try:
        return build_report(engine, run_id, out_dir=report_dir, log=True)
    except Exception as exc:  # the steps are done; a report problem must not lose them
        say(f"[yellow]warning:[/yellow] the report could not be built ({type(exc).__name__}: {exc}); "
            f"try again with 'gnomon report {run_id}'")
        return None


def _plan(workflow: Workflow, variables: dict[str, Any], plan: Plan) -> dict[str, Any]:
    return {
        "name": workflow.name,
        "description": workflow.description,
        "source": workflow.source,
        "variables": {k: jsonable(v) for k, v in variables.items()},
        "report": workflow.report,
        "steps": [p.to_dict() for p in plan.steps],
    }


def resolve_params(step: Step, variables: dict[str, Any], done: dict[str, StepOutcome]) -> dict[str, Any]:
    """The step's parameters with every reference replaced by its value."""

    def lookup(ref: Ref) -> Any:
        if ref.kind == "var":
            return variables[ref.target]
        source = done[ref.step]
        if ref.kind == "run_id":
            return source.run_id
        if ref.key not in source.outputs:
            known = ", ".join(sorted(source.outputs)) or "none"
            raise ParamValidationError(step.task, {ref.text: [
                f"step '{ref.step}' (task '{source.task}') has no output '{ref.key}'; its outputs: {known}"]})
        return source.outputs[ref.key]

    return {key: substitute(value, lookup) for key, value in step.params.items()}


def _run_step(engine, client, experiment_id, workflow, planned: PlannedStep, variables, done, resume, say,
              shared, total, *, checked: bool = False) -> StepOutcome:
    step = planned.step
    label = f"[{step.index + 1}/{total}] [bold]{step.name}[/bold] ({step.task})"
    inputs = {name: done[name].run_id for name in planned.depends_on}
    task = engine.task(step.task)
    try:
        resolved = resolve_params(step, variables, done)
        # a step's check runs once: while planning if it uses no earlier step, else here
        values = engine.validate(task, resolved, preflight=not checked, keep_checks=True)
    except GnomonError as exc:
        raise WorkflowStepError(workflow.name, step, _active_id(), exc) from exc
    key = planned.key
    reused, status = None, ""
    if shared is not None and key in shared:
        reused, status = shared[key], "shared"
    elif resume:
        cached = find_cached_run(client, experiment_id, key)
        if cached is not None:
            reused = StepOutcome(name=step.name, task=task.name, status="cached", run_id=cached.info.run_id,
                                 outputs=outputs_from_tags(cached.data.tags), metrics=dict(cached.data.metrics))
            status = "cached"
    if reused is not None:
        outcome = StepOutcome(name=step.name, task=task.name, status=status, run_id=reused.run_id, cache_key=key,
                              params=values, outputs=dict(reused.outputs), metrics=dict(reused.metrics),
                              inputs=inputs, report=dict(step.report))
        say(f"{label} [cyan]{status}[/cyan]: run {outcome.run_id}")
        return outcome
    say(f"{label} running")
    tags = {STEP_TAG: step.name, WORKFLOW_TAG: workflow.name, CACHE_TAG: key}
    try:
        result = engine.run(task, values, validated=True, nested=True, run_name=step.name, tags=tags)
    except TaskFailedError as exc:
        raise WorkflowStepError(workflow.name, step, _active_id(), exc.cause, exc.run_id) from exc
    except GnomonError as exc:
        raise WorkflowStepError(workflow.name, step, _active_id(), exc) from exc
    say(f"{label} [green]done[/green] in {result.duration_s:.1f}s: run {result.run_id}")
    return StepOutcome(name=step.name, task=task.name, status="ran", run_id=result.run_id, cache_key=key,
                       params=values, outputs=dict(result.outputs), metrics=dict(result.metrics), inputs=inputs,
                       duration_s=result.duration_s, report=dict(step.report))


def _active_id() -> str:
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run else ""
