"""Each workflow step's task check runs exactly once per workflow run (it used to run twice)."""

from __future__ import annotations

from collections import Counter

from marshmallow import fields

from gnomon.core.hookspecs import hookimpl
from gnomon.core.schemas import TaskSchema
from gnomon.core.tasks import Task
from gnomon.core.workflows import parse_workflow, run_workflow

CHECKS: Counter = Counter()

WORKFLOW = '''
[workflow]
name = "checked"

[steps.first]
task = "counted"
params = { value = 1 }

[steps.second]
task = "counted"
params = { value = "${steps.first.outputs.value}" }
'''


class _Schema(TaskSchema):
    value = fields.Integer(load_default=0)


def _check(engine, params):
    CHECKS[params["value"]] += 1
    return {}


def _fn(ctx, value, seed):
    return {"value": value + 1}


class _Plugin:
    @hookimpl
    def register_tasks(self, register):
        register(Task(name="counted", summary="counts its checks", schema=_Schema, fn=_fn, check=_check))


def test_each_step_check_runs_once(gnomon_engine_factory):
    CHECKS.clear()
    engine = gnomon_engine_factory(plugins=[_Plugin()], builtins=False)
    result = run_workflow(engine, parse_workflow(WORKFLOW), {}, make_report=False)
    assert [s.status for s in result.steps] == ["ran", "ran"]
    # first (value 1) checked while planning, second (value 2, known only at run time) when it runs
    assert CHECKS == Counter({1: 1, 2: 1})
