"""Matrix steps: expansion, readable names, per-value settings, include/exclude, references to one
expansion, pairing by axis name, validation naming the expansion, the plan's DAG and content keys."""

from __future__ import annotations

import pytest

from gnomon.core.workflows import WorkflowFileError, WorkflowValidationError, apply_overrides, parse_workflow
from gnomon.core.workflows.refs import step_dependencies
from gnomon.core.workflows.validate import plan_workflow
from tests import test_workflows_support as support

GRID = '''
[vars]
value = 2

[steps.make]
task = "wf_emit"
matrix = { kind = ["a", "b"], size = [1, 2, 3] }
params = { value = "${matrix.size}", label = "${matrix.kind}" }
report = { model = "${matrix.kind} model" }
when = [{ match = { kind = "b" }, params = { epochs = 2 }, report = { data = "clean" } }]

[steps.use]
task = "wf_use"
matrix = { size = [1, 2, 3], kind = ["a", "b"] }
params = { source_run = "${steps.make.run_id}", model = "${steps.make.outputs.model_name}/1" }

[steps.one]
task = "wf_use"
params = { source_run = "${steps.make[kind=b,size=2].run_id}", model = "m/${vars.value}" }
'''


@pytest.fixture
def engine(gnomon_engine_factory):
    support.CALLS.clear()
    return gnomon_engine_factory(plugins=[support])


def test_expansion_names_order_values_and_per_value_settings():
    wf = parse_workflow(GRID)
    make = wf.expansions("make")
    assert [s.name for s in make] == ["make[kind=a,size=1]", "make[kind=a,size=2]", "make[kind=a,size=3]",
                                      "make[kind=b,size=1]", "make[kind=b,size=2]", "make[kind=b,size=3]"]
    first = make[0]
    assert first.base == "make" and first.matrix == {"kind": "a", "size": 1}
    assert first.params == {"value": 1, "label": "a"}  # a whole ${matrix.X} keeps the value's type
    assert first.report == {"model": "a model"}
    assert make[4].params == {"value": 2, "label": "b", "epochs": 2}  # the 'when' entry for kind = b
    assert make[4].report == {"model": "b model", "data": "clean"}
    assert [s.index for s in wf.steps] == list(range(13))


def test_later_matrix_step_is_paired_axis_by_axis_and_a_selector_picks_one_expansion():
    wf = parse_workflow(GRID)
    use = wf.step("use[size=2,kind=b]")
    assert step_dependencies(use.params) == ["make[kind=b,size=2]"]  # same axis values, whatever the order
    assert use.params["model"] == "${steps.make[kind=b,size=2].outputs.model_name}/1"
    assert step_dependencies(wf.step("one").params) == ["make[kind=b,size=2]"]


def test_include_and_exclude():
    text = GRID.replace('matrix = { kind = ["a", "b"], size = [1, 2, 3] }',
                        'matrix = { kind = ["a", "b"], size = [1, 2, 3], exclude = [{ kind = "a", size = 3 }, '
                        '{ kind = "b", size = 1 }], include = [{ kind = "c", size = 9 }] }')
    text = text[:text.index("[steps.use]")]
    wf = parse_workflow(text)
    assert [s.name for s in wf.steps] == ["make[kind=a,size=1]", "make[kind=a,size=2]", "make[kind=b,size=2]",
                                          "make[kind=b,size=3]", "make[kind=c,size=9]"]


@pytest.mark.parametrize("change, message", [
    (('size = [1, 2, 3] }', 'size = [] }'), "[steps.make].matrix.size: empty axis"),
    (('size = [1, 2, 3] }', 'size = [1, 2, 2] }'), "value(s) 2 given twice"),
    (('size = [1, 2, 3] }', 'size = [1, 2, 3], exclude = [{ size = 7 }] }'), "size = 7 is not one of the axis values"),
    (('size = [1, 2, 3] }', 'size = [1, 2, 3], exclude = [{ size = 1 }, { kind = "a", size = 1 }] }'),
     "exclude[1]: excludes [kind=a,size=1] again (already excluded by exclude[0])"),
    (('match = { kind = "b" }', 'match = { knid = "b" }'), "when[0].match: unknown axis 'knid'"),
    (('"${matrix.kind}" }\nreport', '"${matrix.knid}" }\nreport'), "${matrix.kind} names an unknown matrix axis"
     .replace("kind", "knid")),
    (('${steps.make[kind=b,size=2].run_id}', '${steps.make[kind=b].run_id}'),
     "is ambiguous: step 'make' has an axis 'size' that this step does not have"),
    (('${steps.make[kind=b,size=2].run_id}', '${steps.make[kind=z,size=2].run_id}'),
     "step 'make' has no expansion make[kind=z,size=2]"),
    (('${steps.make[kind=b,size=2].run_id}', '${steps.make[colour=b,size=2].run_id}'), "has no axis 'colour'"),
])
def test_bad_matrices_are_file_errors_naming_the_step_or_expansion(change, message):
    with pytest.raises(WorkflowFileError) as info:
        parse_workflow(GRID.replace(*change), source="grid.toml")
    assert message in str(info.value) and "grid.toml" in str(info.value)


def test_validation_covers_every_expansion_and_names_the_one_at_fault(engine):
    # value = 0 breaks Range(min=1) only in the expansions with size = 0
    wf = parse_workflow(GRID.replace("size = [1, 2, 3] }\nparams", "size = [1, 0, 3] }\nparams")
                        .replace("size = [1, 2, 3], kind", "size = [1, 0, 3], kind")
                        .replace("make[kind=b,size=2]", "make[kind=b,size=1]"))
    with pytest.raises(WorkflowValidationError) as info:
        plan_workflow(engine, wf, apply_overrides(wf, {}))
    assert {p.step for p in info.value.problems} == {"make[kind=a,size=0]", "make[kind=b,size=0]"}
    # the same error in several expansions is said once, then every expansion it affects is named
    message = str(info.value)
    assert "greater than or equal to 1" in message
    assert "'make[kind=a,size=0]' (#2, param 'value')" in message and "'make[kind=b,size=0]' (#5, param 'value')" in message
    assert "size=1]" not in message and "size=3]" not in message


def test_the_plan_is_a_dag_of_concrete_steps_with_content_keys(engine):
    wf = parse_workflow(GRID)
    plan = plan_workflow(engine, wf, apply_overrides(wf, {}))
    assert [p.name for p in plan.steps] == [s.name for s in wf.steps]
    use = plan.step("use[size=1,kind=a]")
    assert use.depends_on == ("make[kind=a,size=1]",)
    assert use.inputs == {"make[kind=a,size=1]": plan.step("make[kind=a,size=1]").key}
    assert len({p.key for p in plan.steps}) == len(plan.steps)
    assert [p.name for p in plan.ready(set())] == [s.name for s in wf.expansions("make")]
    done = {s.name for s in wf.expansions("make")}
    assert len(plan.ready(done)) == len(plan.steps) - 6
    # a key depends on the task, the params (defaults filled in) and, recursively, the inputs' keys
    again = plan_workflow(engine, wf, apply_overrides(wf, {}))
    assert [p.key for p in again.steps] == [p.key for p in plan.steps]
    explicit = parse_workflow(GRID.replace('label = "${matrix.kind}" }', 'label = "${matrix.kind}", epochs = 3 }'))
    same = plan_workflow(engine, explicit, apply_overrides(explicit, {}))
    assert same.step("make[kind=a,size=1]").key == plan.step("make[kind=a,size=1]").key  # 3 is the default
    changed = plan_workflow(engine, wf, apply_overrides(wf, {"value": "5"}))
    assert changed.step("one").key != plan.step("one").key
    assert changed.step("use[size=1,kind=a]").key == plan.step("use[size=1,kind=a]").key
    assert plan.to_dict()["steps"][0]["matrix"] == {"kind": "a", "size": 1}


def test_a_matrix_workflow_runs_with_readable_child_runs(engine):
    from gnomon.core.workflows import run_workflow

    wf = parse_workflow(GRID)
    result = run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    assert [s.status for s in result.steps] == ["ran"] * 13
    made = {p["label"] + str(p["value"]) for name, p in support.CALLS if name == "wf_emit"}
    assert made == {"a1", "a2", "a3", "b1", "b2", "b3"}
    used = [p for name, p in support.CALLS if name == "wf_use"]
    assert used[0]["source_run"] == result.by_name["make[kind=a,size=1]"].run_id
    assert used[-1]["source_run"] == result.by_name["make[kind=b,size=2]"].run_id
    parent = engine.mlflow_client().get_run(result.run_id)
    assert parent.data.tags["gnomon.step.make/kind:b/size:2.run_id"] == result.by_name["make[kind=b,size=2]"].run_id
