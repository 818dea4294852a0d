"""Sweeps: one workflow run over the cartesian product of workflow-variable values.

``gnomon workflow run baseline --sweep poison_fraction=0.01,0.05,0.1 --sweep seed=0,1,2``, or a
``[sweep]`` table in the workflow file (``poison_fraction = [0.01, 0.05]``, optional
``exclude = [{ ... }]``; a ``--sweep`` axis replaces the file's axis of the same name).

Every combination is planned and validated before the first step starts (:func:`plan_sweep`).
Steps are identified by their content key (:mod:`.plan`), so a step whose task, resolved
params and inputs are the same in several combinations runs once and is shared; the same
key serves ``--resume``. :func:`run_sweep` makes one parent MLflow run per sweep with each
combination's workflow run nested beneath it, tagged with its variable values.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import GnomonError
from .matrix import Matrix, expansion_name, parse_matrix
from .plan import Plan, PlannedStep
from .spec import Workflow, WorkflowFileError, convert_like
from .validate import Problem, WorkflowValidationError, plan_workflow

SWEEP_TAG = "gnomon.sweep"
SWEEP_PARENT_TAG = "gnomon.sweep.parent"
SWEEP_VAR_TAG = "gnomon.sweep.var."
SEED_VARIABLE = "seed"


def parse_sweep(workflow: Workflow, cli_specs: list[str] | None = None,
                overridden: dict[str, Any] | None = None) -> Matrix | None:
    """The sweep's axes from the file's ``[sweep]`` table and ``--sweep NAME=V1,V2`` specs (None: no sweep).

    Values are converted to each variable's type. Raises :class:`WorkflowFileError` (exit 2)
    naming the spec for an unknown variable, a value of the wrong type, an empty axis, a
    variable also given with ``-P``, an exclude that matches nothing or a combination
    excluded twice.
    """
    import difflib

    problems: list[str] = []
    raw: dict[str, Any] = {}
    where: dict[str, str] = {}
    table = dict(workflow.sweep)
    exclude = table.pop("exclude", [])
    for name, values in table.items():
        spec = f"[sweep].{name}"
        if not isinstance(values, list):
            problems.append(f"{spec}: must be a list of values, e.g. {name} = [0, 1, 2]")
            continue
        raw[name], where[name] = list(values), spec
    for text in cli_specs or []:
        name, sep, values = text.partition("=")
        name = name.strip()
        spec = f"--sweep {text}"
        if not sep or not name:
            problems.append(f"{spec}: expected NAME=VALUE1,VALUE2,...")
            continue
        items = [v.strip() for v in values.split(",")] if values.strip() else []
        if any(not v for v in items):
            problems.append(f"{spec}: an empty value between commas")
            continue
        raw[name], where[name] = items, spec
    if not raw and not problems:
        return None
    axes: dict[str, list[Any]] = {}
    for name, values in raw.items():
        spec = where[name]
        if name not in workflow.variables:
            close = difflib.get_close_matches(name, list(workflow.variables), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else \
                f"known variables: {', '.join(sorted(workflow.variables)) or 'none'}"
            problems.append(f"{spec}: unknown workflow variable '{name}'; {hint}")
            continue
        if overridden and name in overridden:
            problems.append(f"{spec}: '{name}' is also given with -P; sweep it or set it, not both")
            continue
        if not values:
            problems.append(f"{spec}: empty axis; give at least one value")
            continue
        converted = []
        for value in values:
            try:
                converted.append(coerce(workflow.variables[name], value))
            except ValueError as exc:
                problems.append(f"{spec}: value {value!r}: {exc} (like the default {workflow.variables[name]!r})")
        axes[name] = converted
    if problems:
        raise WorkflowFileError(workflow.source, problems)
    matrix, found = parse_matrix({**axes, "exclude": exclude}, "[sweep]" if workflow.sweep else "--sweep",
                                 kind="sweep")
    if found:
        raise WorkflowFileError(workflow.source, found)
    return matrix


def coerce(default: Any, value: Any) -> Any:
    """``value`` (text from the CLI or a TOML value) as the type of the variable's ``default``."""
    if isinstance(value, str):
        return convert_like(default, value)
    if isinstance(default, bool) != isinstance(value, bool):
        raise ValueError("expected a boolean" if isinstance(default, bool) else "expected a number or text, "
                         "not a boolean")
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, float) and not value.is_integer() or not isinstance(value, (int, float)):
            raise ValueError("expected an integer")
        return int(value)
    if isinstance(default, float):
        if not isinstance(value, (int, float)):
            raise ValueError("expected a number")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        return str(value)
    return value


@dataclass(frozen=True)
class Combination:
    """One combination of swept values: its full variables and its validated plan."""

    values: dict[str, Any]
    variables: dict[str, Any]
    plan: Plan

    @property
    def label(self) -> str:
        return expansion_name("", self.values)[1:-1]


@dataclass(frozen=True)
class SweepPlan:
    """Every combination's plan, and the steps they share (by content key)."""

    workflow: Workflow
    matrix: Matrix
    combinations: tuple[Combination, ...]

    def unique_steps(self) -> list[PlannedStep]:
        """One planned step per content key, in a valid run order (first combination first)."""
        seen: dict[str, PlannedStep] = {}
        for combination in self.combinations:
            for planned in combination.plan.steps:
                seen.setdefault(planned.key, planned)
        return list(seen.values())

    def key_dependencies(self) -> dict[str, list[str]]:
        """``{content key: [content keys it depends on]}``: the sweep's DAG of unique steps."""
        return {p.key: list(dict.fromkeys(p.inputs.values())) for p in self.unique_steps()}

    @property
    def total_steps(self) -> int:
        return sum(len(c.plan.steps) for c in self.combinations)


def plan_sweep(engine, workflow: Workflow, variables: dict[str, Any], matrix: Matrix, *,
               preflight: bool = True) -> SweepPlan:
    """Plan and validate every combination; raise :class:`WorkflowValidationError` naming each bad one.

    Nothing is run and no MLflow run is created. Task ``check`` functions run once per distinct step.
    """
    combos: list[Combination] = []
    problems: list[Problem] = []
    checked: set[str] = set()
    for values in matrix.combinations():
        full = {**variables, **values}
        label = expansion_name("", values)[1:-1]
        try:
            plan = plan_workflow(engine, workflow, full, preflight=False)
        except WorkflowValidationError as exc:
            problems.extend(Problem(f"{p.step} (sweep combination {label})" if p.step else "", p.index, p.task,
                                    p.field, p.message if p.step else f"sweep combination {label}: {p.message}")
                            for p in exc.problems)
            continue
        combos.append(Combination(values=dict(values), variables=full, plan=plan))
    if problems:
        raise WorkflowValidationError(workflow.name, problems)
    if preflight:
        checked_keys: set[str] = set()  # steps whose task check ran while planning (runs once per key)
        for combination in combos:
            if all(p.key in checked for p in combination.plan.steps):
                continue
            try:
                full = plan_workflow(engine, workflow, combination.variables, preflight=True)
                checked_keys.update(p.key for p in full.steps if p.name in full.checked)
            except WorkflowValidationError as exc:
                problems.extend(Problem(f"{p.step} (sweep combination {combination.label})", p.index, p.task,
                                        p.field, p.message) for p in exc.problems)
            checked.update(p.key for p in combination.plan.steps)
        if problems:
            raise WorkflowValidationError(workflow.name, problems)
        combos = [replace(c, plan=replace(c.plan, checked=frozenset(p.name for p in c.plan.steps
                                                                    if p.key in checked_keys)))
                  for c in combos]
    return SweepPlan(workflow=workflow, matrix=matrix, combinations=tuple(combos))


@dataclass
class SweepResult:
    """The sweep's parent run and every combination's workflow result."""

    workflow: str
    run_id: str
    experiment_id: str
    status: str
    combinations: list[Any] = field(default_factory=list)  # (Combination, WorkflowResult)
    duration_s: float = 0.0
    steps_ran: int = 0
    steps_shared: int = 0
    steps_cached: int = 0
    leaderboard: Any = None


def run_sweep(engine, sweep: SweepPlan, *, resume: bool = False, make_report: bool = True,
              report_dir=None) -> SweepResult:
    """Run every combination under one parent MLflow run; each distinct step runs once.

    Combinations run one after another in this process. A step already run for an earlier
    combination (same content key) is shared, not run again; with ``resume`` a FINISHED run
    with the key from an earlier invocation is reused too.
    """
    import mlflow

    from ..environment import fingerprint_tags
    from .runner import WorkflowStepError, _Printer, library_versions, run_workflow

    workflow = sweep.workflow
    experiment_id = engine.ensure_tracking()
    say = _Printer(engine.show_progress)
    axes = {k: list(v) for k, v in sweep.matrix.axes.items()}
    tags = {SWEEP_TAG: workflow.name, "gnomon.workflow.source": workflow.source,
            "gnomon.workflow.sha256": workflow.digest, "gnomon.sweep.axes": json.dumps(axes),
            "gnomon.workflow.resume": str(resume).lower(),
            "gnomon.versions": json.dumps(library_versions(), sort_keys=True), **fingerprint_tags()}
    shared: dict[str, Any] = {}
    started = time.perf_counter()
    result = None
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"sweep:{workflow.name}", tags=tags) as parent:
        parent_id = parent.info.run_id
        result = SweepResult(workflow=workflow.name, run_id=parent_id, experiment_id=experiment_id, status="RUNNING")
        mlflow.log_params({f"sweep.{k}": ",".join(str(v) for v in values)[:6000] for k, values in axes.items()})
        mlflow.log_text(workflow.text, f"workflow/{workflow.name}.toml")
        mlflow.log_dict({"axes": axes, "exclude": list(sweep.matrix.exclude),
                         "combinations": [c.values for c in sweep.combinations],
                         "unique_steps": len(sweep.unique_steps()), "total_steps": sweep.total_steps},
                        "sweep/plan.json")
        say(f"[bold]sweep {workflow.name}[/bold]: {len(sweep.combinations)} combinations, "
            f"{sweep.total_steps} steps of which {len(sweep.unique_steps())} distinct; parent run {parent_id}")
        try:
            for i, combination in enumerate(sweep.combinations, 1):
                say(f"[bold]combination {i}/{len(sweep.combinations)}[/bold]: {combination.label}")
                var_tags = {f"{SWEEP_VAR_TAG}{k}": str(v) for k, v in combination.values.items()}
                outcome = run_workflow(engine, workflow, combination.variables, plan=combination.plan,
                                       shared=shared, resume=resume, make_report=False, nested=True,
                                       extra_tags={SWEEP_PARENT_TAG: parent_id, **var_tags},
                                       run_name=f"workflow:{workflow.name}[{combination.label}]")
                result.combinations.append((combination, outcome))
        except KeyboardInterrupt:
            mlflow.set_tag("gnomon.error", "interrupted")
            mlflow.end_run(status="KILLED")
            raise
        except (WorkflowStepError, GnomonError) as exc:
            mlflow.set_tag("gnomon.error", str(exc)[:5000])
            mlflow.end_run(status="FAILED")
            raise
        outcomes = [s for _, r in result.combinations for s in r.steps]
        result.steps_ran = sum(s.status == "ran" for s in outcomes)
        result.steps_shared = sum(s.status == "shared" for s in outcomes)
        result.steps_cached = sum(s.status == "cached" for s in outcomes)
        result.duration_s = time.perf_counter() - started
        mlflow.log_metrics({"gnomon_wall_time_s": result.duration_s, "steps_ran": result.steps_ran,
                            "steps_shared": result.steps_shared, "steps_cached": result.steps_cached})
    result.status = "FINISHED"
    if make_report:
        from .leaderboard import build_leaderboard

        try:
            result.leaderboard = build_leaderboard(engine, parent_id, out_dir=report_dir, log=True)
        except Exception as exc:  # the runs are done; a report problem must not lose them
            say(f"[yellow]warning:[/yellow] the leaderboard could not be built ({type(exc).__name__}: {exc}); "
                f"try again with 'gnomon report {parent_id}'")
    return result
