"""The workflow file format: a TOML file of workflow-level variables and named, ordered steps.

Example::

    [workflow]
    name = "baseline"
    description = "Backdoor poisoning by mislabelling, three defenses."

    [vars]
    epochs = 3          # override with: gnomon workflow run baseline -P epochs=1

    [steps.train_clean]
    task = "train"
    params = { epochs = "${vars.epochs}", register_model = true, model_tag = "clean" }

    [steps.infer_clean]
    task = "infer"
    params = { model = "${steps.train_clean.outputs.model_name}/${steps.train_clean.outputs.model_version}" }
    report = { model = "clean model", dataset = "clean" }

Steps run in file order. A parameter value may refer to a workflow variable
(``${vars.NAME}``) or to an earlier step's run id (``${steps.NAME.run_id}``) or output
(``${steps.NAME.outputs.KEY}``). A value that is exactly one reference keeps the
referenced value's type; references inside a longer string are interpolated as text.

A step with a ``matrix`` of named axes expands into one concrete step per combination
(:mod:`.matrix`); :attr:`Workflow.steps` holds the concrete steps in run order and
:attr:`Workflow.declared` the steps as written. An optional ``[sweep]`` table gives
variable values to run the workflow over (:mod:`.sweep`).
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GnomonError
from .matrix import Matrix, When, expansion_name, pair_refs, parse_matrix, parse_when, substitute_matrix

STEP_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCALARS = (str, int, float, bool)


class WorkflowFileError(GnomonError):
    """A workflow file is not valid TOML or does not follow the workflow format."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, list(problems)
        lines = [f"invalid workflow file '{source}':"] + [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Step:
    """One concrete step: a task, its raw parameters (may hold references) and report labels.

    For an expansion of a matrix step, ``name`` is ``BASE[axis=value,...]``, ``base`` the
    declared step's name and ``matrix`` the expansion's axis values; otherwise ``name ==
    base`` and ``matrix`` is empty. ``index`` is the position in run order.
    """

    name: str
    task: str
    params: dict[str, Any]
    report: dict[str, str] = field(default_factory=dict)
    description: str = ""
    index: int = 0
    base: str = ""
    matrix: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepSpec:
    """A step as declared in the file (before matrix expansion)."""

    name: str
    task: str
    params: dict[str, Any]
    report: dict[str, str] = field(default_factory=dict)
    description: str = ""
    index: int = 0
    matrix: Matrix | None = None
    when: tuple[When, ...] = ()


@dataclass(frozen=True)
class Workflow:
    """A parsed workflow file."""

    name: str
    description: str
    variables: dict[str, Any]
    steps: tuple[Step, ...]
    report: dict[str, Any] = field(default_factory=dict)
    source: str = "<string>"
    text: str = ""
    declared: tuple[StepSpec, ...] = ()
    sweep: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def expansions(self, base: str) -> list[Step]:
        """The concrete steps of the declared step ``base`` (one, unless it has a matrix)."""
        return [s for s in self.steps if s.base == base]

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def digest(self) -> str:
        """sha256 of the file's text (recorded on the parent run)."""
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_workflow(path: str | Path) -> Workflow:
    """Read and parse a workflow file; raises :class:`WorkflowFileError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WorkflowFileError(str(path), [f"cannot read it: {exc.strerror or exc}"]) from None
    return parse_workflow(text, source=str(path), default_name=path.stem)


def parse_workflow(text: str, *, source: str = "<string>", default_name: str = "workflow") -> Workflow:
    """Parse workflow TOML text. Every structural problem is reported at once."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise WorkflowFileError(source, [f"not valid TOML: {exc}"]) from None
    problems: list[str] = []
    unknown = sorted(set(data) - {"workflow", "vars", "steps", "report", "sweep"})
    if unknown:
        problems.append(f"unknown top-level table(s) {', '.join(unknown)}; expected [workflow], [vars], "
                        "[steps.NAME], [report] and [sweep]")
    meta = data.get("workflow", {})
    if not isinstance(meta, dict):
        problems.append("[workflow] must be a table with 'name' and 'description'")
        meta = {}
    extra = sorted(set(meta) - {"name", "description"})
    if extra:
        problems.append(f"[workflow]: unknown key(s) {', '.join(extra)}; expected name, description")
    name = meta.get("name", default_name)
    if not isinstance(name, str) or not name:
        problems.append("[workflow].name must be a non-empty string")
        name = default_name
    description = meta.get("description", "")
    if not isinstance(description, str):
        problems.append("[workflow].description must be a string")
        description = ""

    variables = data.get("vars", {})
    if not isinstance(variables, dict):
        problems.append("[vars] must be a table of name = value")
        variables = {}
    for key, value in variables.items():
        if not isinstance(value, SCALARS):
            problems.append(f"[vars].{key}: must be a string, number or boolean, got {type(value).__name__}")
        elif isinstance(value, str) and "${" in value:
            problems.append(f"[vars].{key}: variables cannot contain references")

    report = data.get("report", {})
    if not isinstance(report, dict):
        problems.append("[report] must be a table")
        report = {}

    sweep = data.get("sweep", {})
    if not isinstance(sweep, dict):
        problems.append("[sweep] must be a table of variable = [values]")
        sweep = {}

    raw_steps = data.get("steps")
    steps: list[StepSpec] = []
    if not isinstance(raw_steps, dict) or not raw_steps:
        problems.append("no steps: add at least one [steps.NAME] table with 'task' and 'params'")
        raw_steps = {}
    for index, (step_name, body) in enumerate(raw_steps.items()):
        where = f"[steps.{step_name}]"
        if not STEP_NAME_RE.match(step_name):
            problems.append(f"{where}: step names use letters, digits and underscores")
        if not isinstance(body, dict):
            problems.append(f"{where}: must be a table with 'task' and 'params'")
            continue
        extra = sorted(set(body) - {"task", "params", "report", "description", "matrix", "when"})
        if extra:
            problems.append(f"{where}: unknown key(s) {', '.join(extra)}; expected task, params, report, "
                            "description, matrix, when")
        task = body.get("task")
        if not isinstance(task, str) or not task:
            problems.append(f"{where}: 'task' (the task name) is required")
            task = ""
        params = body.get("params", {})
        if not isinstance(params, dict):
            problems.append(f"{where}: 'params' must be a table of name = value")
            params = {}
        for key, value in params.items():
            if not _plain(value):
                problems.append(f"{where}.params.{key}: must be a string, number, boolean or a list of them")
        labels = body.get("report", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            problems.append(f"{where}.report: must be a table of strings such as {{ model = \"clean\", "
                            "dataset = \"triggered\" }")
            labels = {}
        matrix = None
        if "matrix" in body:
            matrix, found = parse_matrix(body["matrix"], f"{where}.matrix")
            problems.extend(found)
        when: tuple[When, ...] = ()
        if matrix is not None or "matrix" not in body:
            when, found = parse_when(body.get("when"), where, matrix, _plain)
            problems.extend(found)
        steps.append(StepSpec(name=step_name, task=task, params=dict(params), report=dict(labels),
                              description=str(body.get("description", "")), index=index, matrix=matrix,
                              when=when))
    if problems:
        raise WorkflowFileError(source, problems)
    concrete = expand_steps(steps, problems)
    if problems:
        raise WorkflowFileError(source, problems)
    return Workflow(name=name, description=description, variables=dict(variables), steps=tuple(concrete),
                    report=dict(report), source=source, text=text, declared=tuple(steps), sweep=dict(sweep))


def expand_steps(declared: list[StepSpec], problems: list[str]) -> list[Step]:
    """Every declared step's concrete steps, in file order (a matrix step's in combination order).

    ``${matrix.AXIS}`` is substituted in task, params and report labels; ``when`` entries add
    their params and labels; step references are pointed at concrete expansions. Problems
    (naming the expansion) are appended to ``problems``.
    """
    expansions = {s.name: s.matrix.combinations() for s in declared if s.matrix is not None}
    out: list[Step] = []
    for spec in declared:
        combos = expansions.get(spec.name, [{}])
        for combination in combos:
            name = expansion_name(spec.name, combination)
            where = f"[steps.{spec.name}]" + (f" expansion '{name}'" if combination else "")
            params = dict(spec.params)
            report = dict(spec.report)
            for when in spec.when:
                if all(axis in combination and _same(combination[axis], v) for axis, v in when.match.items()):
                    params.update(when.params)
                    report.update(when.report)
            task = substitute_matrix(spec.task, combination, problems, f"{where}.task")
            if not isinstance(task, str):
                problems.append(f"{where}.task: must name a task, got {task!r}")
                task = str(task)
            params = {k: pair_refs(substitute_matrix(v, combination, problems, f"{where}.params.{k}"),
                                   combination, expansions, problems, f"{where}.params.{k}")
                      for k, v in params.items()}
            report = {k: str(substitute_matrix(v, combination, problems, f"{where}.report.{k}"))
                      for k, v in report.items()}
            out.append(Step(name=name, task=task, params=params, report=report, description=spec.description,
                            index=len(out), base=spec.name, matrix=dict(combination)))
    return out


def _same(a: Any, b: Any) -> bool:
    from .refs import value_text

    return value_text(a) == value_text(b)


def _plain(value: Any) -> bool:
    if isinstance(value, SCALARS):
        return True
    return isinstance(value, list) and all(isinstance(v, SCALARS) for v in value)


def apply_overrides(workflow: Workflow, overrides: dict[str, str]) -> dict[str, Any]:
    """The workflow's variables with ``-P name=value`` overrides converted to each default's type.

    Raises :class:`WorkflowFileError` for an unknown variable (with a suggestion) or a value
    that does not convert.
    """
    import difflib

    values = dict(workflow.variables)
    problems = []
    for name, text in overrides.items():
        if name not in values:
            close = difflib.get_close_matches(name, list(values), n=1, cutoff=0.6)
            known = ", ".join(sorted(values)) or "none"
            hint = f"did you mean '{close[0]}'?" if close else f"known variables: {known}"
            problems.append(f"-P {name}: unknown workflow variable; {hint}")
            continue
        try:
            values[name] = convert_like(values[name], text)
        except ValueError as exc:
            problems.append(f"-P {name}={text}: {exc}")
    if problems:
        raise WorkflowFileError(workflow.source, problems)
    return values


def convert_like(default: Any, text: Any) -> Any:
    """Convert the string ``text`` to the type of ``default`` (bool, int, float or str)."""
    if not isinstance(text, str):
        return text
    if isinstance(default, bool):
        low = text.strip().lower()
        if low in {"true", "1", "yes", "on"}:
            return True
        if low in {"false", "0", "no", "off"}:
            return False
        raise ValueError("expected a boolean (true or false)")
    if isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    return text
