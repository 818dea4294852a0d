"""The plan of a workflow run: concrete steps in run order, their dependencies and content keys.

:func:`~.validate.plan_workflow` validates a workflow and returns a :class:`Plan`, a DAG of
concrete steps (matrix steps already expanded). Each :class:`PlannedStep` carries its
**content key**: sha256 of the task, its validated parameters (variables substituted,
defaults filled in) and, in place of every reference to another step, that step's own
content key. Two steps with the same key do the same work on the same inputs, so

- ``--resume`` reuses a FINISHED run tagged with the key (tag ``gnomon.cache_key``);
- a sweep runs a step shared by several combinations once (:mod:`.sweep`);
- a scheduler can enqueue one job per key once the keys it depends on are done.

The key is known before anything runs (it does not need run ids), and it changes whenever
the task, a parameter or anything upstream changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .spec import Step, Workflow


@dataclass(frozen=True)
class PlannedStep:
    """One concrete step of a plan.

    Attributes:
        step: the concrete :class:`~.spec.Step` (``name``, ``base``, ``matrix``, ``task``, raw ``params``
            with references pointing at concrete step names, ``report`` labels, ``index``).
        key: the content key.
        depends_on: names of the concrete steps whose run id or outputs it uses (earlier in run order).
        inputs: ``{dependency name: its content key}``.
    """

    step: Step
    key: str
    depends_on: tuple[str, ...] = ()
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.step.name

    @property
    def task(self) -> str:
        return self.step.task

    def to_dict(self) -> dict[str, Any]:
        s = self.step
        return {"name": s.name, "base": s.base, "matrix": dict(s.matrix), "task": s.task, "params": s.params,
                "report": s.report, "depends_on": list(self.depends_on), "key": self.key}


@dataclass(frozen=True)
class Plan:
    """A validated workflow as a DAG of concrete steps (``steps`` in a valid run order)."""

    workflow: Workflow
    variables: dict[str, Any]
    steps: tuple[PlannedStep, ...]
    #: names of the steps whose task ``check`` already ran while planning (not run again)
    checked: frozenset[str] = frozenset()

    def step(self, name: str) -> PlannedStep:
        for planned in self.steps:
            if planned.name == name:
                return planned
        raise KeyError(name)

    @property
    def by_key(self) -> dict[str, PlannedStep]:
        return {p.key: p for p in self.steps}

    def dependencies(self) -> dict[str, list[str]]:
        """``{step name: [names of the steps it uses]}``."""
        return {p.name: list(p.depends_on) for p in self.steps}

    def ready(self, done: set[str] | frozenset[str]) -> list[PlannedStep]:
        """Steps not in ``done`` whose dependencies are all in ``done`` (names), in run order."""
        return [p for p in self.steps if p.name not in done and all(d in done for d in p.depends_on)]

    def to_dict(self) -> dict[str, Any]:
        return {"workflow": self.workflow.name, "variables": dict(self.variables),
                "steps": [p.to_dict() for p in self.steps]}
