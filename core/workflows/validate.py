"""Checking a whole workflow before its first step starts.

Every step's parameters are validated against its task's schema with workflow variables
substituted and references to earlier steps replaced by placeholders of the right type,
so a typo in the last step fails at once, naming the step and the field. References to
unknown or later steps, unknown variables and unknown tasks are errors too. Steps whose
parameters need no earlier step also run their task's ``check`` (e.g. the model exists).
Matrix steps are checked expansion by expansion, so an error names the expansion at fault.

:func:`plan_workflow` returns the validated :class:`~.plan.Plan` with every step's content key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Any

from ..errors import GnomonError, ParamValidationError, UnknownNameError
from .cache import cache_key
from .plan import Plan, PlannedStep
from .refs import Keep, Ref, RefSyntaxError, find_refs, step_dependencies, substitute
from .spec import Workflow

#: Stand-in for a run id while validating (32 hex digits like an MLflow run id, not a number).
RUN_ID_PLACEHOLDER = "deadbeef" * 4


@dataclass(frozen=True)
class Problem:
    step: str
    index: int
    task: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"step '{self.step}' (#{self.index + 1}, task '{self.task}')" if self.step else "workflow"
        return f"{where}, {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class WorkflowValidationError(GnomonError):
    """One or more steps have invalid parameters or references; nothing was run."""

    exit_code = 2

    def __init__(self, workflow: str, problems: list[Problem]):
        self.workflow, self.problems = workflow, list(problems)
        super().__init__("\n".join([f"workflow '{workflow}' is invalid; no step was run:"] + _lines(self.problems)))


def _lines(problems: list[Problem]) -> list[str]:
    """One line per problem; a message several steps share (MNIST offline, say) is said once, then its steps."""
    by_message: dict[str, list[Problem]] = {}
    for p in problems:
        by_message.setdefault(p.message, []).append(p)
    lines = []
    for message, group in by_message.items():
        if len(group) == 1 or not all(p.step for p in group):
            lines += [f"  {p}" for p in group]
            continue
        steps = ", ".join(f"'{p.step}' (#{p.index + 1}, {p.field})" for p in group)
        lines += [f"  {message}", f"    steps affected: {steps}"]
    return lines


def validate_workflow(engine, workflow: Workflow, variables: dict[str, Any], *, preflight: bool = True) -> Plan:
    """Raise :class:`WorkflowValidationError` listing every problem in every step, or return the plan.

    First every step's parameters are checked against its schema (fast); only if all pass do
    the tasks' ``check`` functions run (with ``preflight``) for steps that use no earlier step.
    """
    try:
        return plan_workflow(engine, workflow, variables, preflight=preflight)
    finally:
        engine.store.release_checks()  # validation alone keeps nothing the checks loaded


def plan_workflow(engine, workflow: Workflow, variables: dict[str, Any], *, preflight: bool = True) -> Plan:
    """Validate ``workflow`` with ``variables`` and return its :class:`~.plan.Plan` (content keys included).

    Raises :class:`WorkflowValidationError` listing every problem in every (expanded) step.
    """
    problems: list[Problem] = []
    keys: dict[str, str] = {}
    planned: list[PlannedStep] = []
    checks: list[tuple[Any, Any, dict[str, Any]]] = []
    names = workflow.step_names
    for step in workflow.steps:
        def problem(field: str, message: str, step=step) -> None:
            problems.append(Problem(step.name, step.index, step.task, field, message))

        try:
            task = engine.task(step.task)
        except UnknownNameError as exc:
            problem("task", str(exc))
            task = None
        ref_ok = True
        step_ref_fields: dict[str, list[Ref]] = {}
        for key, value in step.params.items():
            try:
                refs = find_refs(value)
            except RefSyntaxError as exc:
                problem(f"param '{key}'", str(exc))
                ref_ok = False
                continue
            for ref in refs:
                message = _ref_problem(ref, step.index, names, variables)
                if message:
                    problem(f"param '{key}'", message)
                    ref_ok = False
                elif ref.kind != "var":
                    step_ref_fields.setdefault(key, []).append(ref)
        if task is None or not ref_ok:
            continue
        schema_fields = task.schema().fields
        params = {key: _with_placeholders(value, variables, schema_fields.get(key), engine.registry)
                  for key, value in step.params.items()}
        values = None
        try:
            values = engine.validate(task, params, preflight=False)
        except ParamValidationError as exc:
            fatal = False
            for field, messages in exc.errors.items():
                only_outputs = field in step_ref_fields and all(r.kind == "output" for r in step_ref_fields[field])
                if only_outputs and field in schema_fields:
                    continue  # the real value is known only when the step runs; it is validated then
                fatal = True
                for message in messages:
                    problem(f"param '{field}'", message)
            if fatal:
                continue
        depends_on = step_dependencies(step.params)
        inputs = {name: keys[name] for name in depends_on if name in keys}
        key = cache_key(task.name, _key_params(task, step.params, values, variables, keys), inputs)
        keys[step.name] = key
        planned.append(PlannedStep(step=step, key=key, depends_on=tuple(depends_on), inputs=inputs))
        if not step_ref_fields and task.check is not None and values is not None:
            checks.append((step, task, values))
    if problems:  # schema problems are reported at once, before any (slower) check runs
        raise WorkflowValidationError(workflow.name, problems)
    plan = Plan(workflow=workflow, variables=dict(variables), steps=tuple(planned))
    if not preflight:
        return plan
    from ..datasets.mnist import failures_remembered

    with failures_remembered():  # offline, the MNIST mirrors are tried once, not once per step
        for step, task, values in checks:
            try:
                found = task.check(engine.check_context(task, values), values) or {}
            except GnomonError as exc:
                found = {"(check)": str(exc)}
            for field, message in found.items():
                for text in (message if isinstance(message, (list, tuple)) else [message]):
                    problems.append(Problem(step.name, step.index, step.task, f"param '{field}'", str(text)))
    if problems:
        raise WorkflowValidationError(workflow.name, problems)
    return replace(plan, checked=frozenset(step.name for step, _, _ in checks))


def _key_params(task, raw: dict[str, Any], values: dict[str, Any] | None, variables: dict[str, Any],
                keys: dict[str, str]) -> dict[str, Any]:
    """The parameters a content key covers: validated values, with step references written as the
    referenced step's content key (``${steps.<key>.outputs.model_name}``) instead of a placeholder."""
    from ..params import defaults

    def symbolic(ref: Ref):
        if ref.kind == "var":
            return variables[ref.target]
        return Keep(ref.with_step(keys.get(ref.step, ref.step)))

    out = dict(values) if values is not None else {k: v for k, v in defaults(task).items() if v is not None}
    for key, value in raw.items():
        refs = find_refs(value)
        if values is None or any(r.kind != "var" for r in refs):
            out[key] = substitute(value, symbolic)
    return out


def _ref_problem(ref: Ref, index: int, names: list[str], variables: dict[str, Any]) -> str | None:
    if ref.kind == "var":
        if ref.target in variables:
            return None
        close = difflib.get_close_matches(ref.target, list(variables), n=1, cutoff=0.6)
        hint = f"; did you mean '${{vars.{close[0]}}}'?" if close else \
            f"; add it to [vars] (known: {', '.join(sorted(variables)) or 'none'})"
        return f"{ref.text} refers to an unknown workflow variable '{ref.target}'{hint}"
    if ref.step not in names:
        close = difflib.get_close_matches(ref.step, names, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{ref.text} refers to step '{ref.step}', which does not exist{hint}"
    target = names.index(ref.step)
    if target == index:
        return f"{ref.text} refers to this step itself; a step can only use earlier steps' results"
    if target > index:
        return (f"{ref.text} refers to step '{ref.step}' (#{target + 1}), which runs later; "
                "a step can only use earlier steps' results")
    return None


def _with_placeholders(value: Any, variables: dict[str, Any], field: Any, registry) -> Any:
    return substitute(value, lambda ref: _placeholder(ref, variables, field, registry))


def _placeholder(ref: Ref, variables: dict[str, Any], field: Any, registry) -> Any:
    """The value used for ``ref`` while validating: a variable's value, or a stand-in of the field's type."""
    if ref.kind == "var":
        return variables[ref.target]
    if ref.kind == "run_id":
        return RUN_ID_PLACEHOLDER
    return placeholder_for_field(field, registry)


def placeholder_for_field(field: Any, registry=None) -> Any:
    """A value of ``field``'s type that satisfies its range / choice validators when possible."""
    from marshmallow import fields, validate

    from ..fields import RegistryName, reset_registry, use_registry

    if field is None:
        return "1"
    for v in getattr(field, "validators", []):
        if isinstance(v, validate.OneOf) and v.choices:
            return list(v.choices)[0]
    if isinstance(field, RegistryName):
        token = use_registry(registry)
        try:
            choices = field.choices()
        finally:
            reset_registry(token)
        return choices[0] if choices else "1"
    if isinstance(field, fields.Boolean):
        return False
    if isinstance(field, (fields.Integer, fields.Float, fields.Number)):
        number: float = 1
        for v in getattr(field, "validators", []):
            if isinstance(v, validate.Range):
                if v.min is not None:
                    number = v.min if v.min_inclusive else v.min + (1 if isinstance(field, fields.Integer) else 1e-6)
                elif v.max is not None:
                    number = v.max if v.max_inclusive else v.max - 1
        return int(number) if isinstance(field, fields.Integer) else float(number)
    if isinstance(field, fields.List):
        return []
    return "1"


def dependencies(workflow: Workflow) -> dict[str, list[str]]:
    """For each step, the earlier steps it uses."""
    return {s.name: step_dependencies(s.params) for s in workflow.steps}
