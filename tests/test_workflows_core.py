"""Workflow files, references, whole-workflow validation, parent/child runs, failures and the resume cache.

Uses small real tasks (tests/test_workflows_support.py) on a throwaway MLflow store.
"""

from __future__ import annotations

import pytest

from gnomon.core.workflows import (
    WorkflowFileError,
    WorkflowStepError,
    WorkflowValidationError,
    apply_overrides,
    parse_workflow,
    run_workflow,
)
from gnomon.core.workflows.cache import cache_key
from tests import test_workflows_support as support

CHAIN = '''
[workflow]
name = "chain"
description = "emit, then use the outputs twice"

[vars]
value = 2
factor = 1.5
fail = false

[steps.first]
task = "wf_emit"
params = { value = "${vars.value}", label = "a" }

[steps.second]
task = "wf_use"
params = { source_run = "${steps.first.run_id}", model = "${steps.first.outputs.model_name}/${steps.first.outputs.model_version}", factor = "${vars.factor}" }

[steps.third]
task = "wf_use"
params = { source_run = "${steps.second.run_id}", model = "${steps.second.outputs.echo}" }

[steps.side]
task = "wf_emit"
params = { value = 5, label = "b" }
'''


@pytest.fixture
def engine(gnomon_engine_factory):
    support.CALLS.clear()
    return gnomon_engine_factory(plugins=[support])


def _children(engine, parent_id):
    client = engine.mlflow_client()
    exp = client.get_experiment_by_name(engine.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {r.data.tags["gnomon.workflow.step"]: r for r in runs}


def _all_runs(engine):
    client = engine.mlflow_client()
    exp = client.get_experiment_by_name(engine.experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _called(task):
    return [params for name, params in support.CALLS if name == task]


# -- file format -------------------------------------------------------------------------------

def test_file_errors_name_the_file_and_every_problem():
    with pytest.raises(WorkflowFileError, match="(?s)my.toml.*not valid TOML"):
        parse_workflow("[steps.a\n", source="my.toml")
    with pytest.raises(WorkflowFileError) as info:
        parse_workflow('[steps.a]\ntask = "x"\nparms = {}\n[stepz.b]\n', source="w.toml")
    text = str(info.value)
    assert "w.toml" in text and "unknown key(s) parms" in text and "stepz" in text
    with pytest.raises(WorkflowFileError, match="no steps"):
        parse_workflow('[workflow]\nname = "empty"\n')


def test_overrides_convert_to_the_variable_type_and_reject_unknown_names():
    wf = parse_workflow(CHAIN)
    values = apply_overrides(wf, {"value": "7", "factor": "0.25", "fail": "true"})
    assert values == {"value": 7, "factor": 0.25, "fail": True}
    with pytest.raises(WorkflowFileError, match="unknown workflow variable; did you mean 'value'"):
        apply_overrides(wf, {"valeu": "3"})
    with pytest.raises(WorkflowFileError, match="value=abc: expected an integer"):
        apply_overrides(wf, {"value": "abc"})


# -- validation before anything runs ------------------------------------------------------------

def test_a_typo_in_the_last_step_fails_before_the_first_step_runs(engine):
    text = CHAIN.replace('params = { value = 5, label = "b" }', 'params = { valeu = 5, label = "b" }')
    wf = parse_workflow(text)
    with pytest.raises(WorkflowValidationError) as info:
        run_workflow(engine, wf, apply_overrides(wf, {}))
    message = str(info.value)
    assert "step 'side' (#4, task 'wf_emit')" in message
    assert "param 'valeu': unknown parameter; did you mean 'value'?" in message
    assert support.CALLS == []
    assert _all_runs(engine) == []  # not even a parent run


def test_every_bad_step_is_reported_at_once(engine):
    text = CHAIN.replace('label = "a"', 'label = "a", epochs = 0') \
        .replace('params = { value = 5, label = "b" }', 'params = { value = "many" }')
    text += '\n[steps.extra]\ntask = "wf_emitt"\n'
    wf = parse_workflow(text)
    with pytest.raises(WorkflowValidationError) as info:
        run_workflow(engine, wf, apply_overrides(wf, {}))
    problems = {(p.step, p.field) for p in info.value.problems}
    assert problems == {("first", "param 'epochs'"), ("side", "param 'value'"), ("extra", "task")}
    assert "did you mean 'wf_emit'" in str(info.value)


def test_a_variable_override_is_validated_against_the_schema(engine):
    wf = parse_workflow(CHAIN)
    with pytest.raises(WorkflowValidationError, match=r"(?s)step .first.*param .value."):
        run_workflow(engine, wf, apply_overrides(wf, {"value": "0"}))  # Range(min=1)
    assert support.CALLS == []


@pytest.mark.parametrize("ref, message", [
    ("${steps.frist.run_id}", "refers to step 'frist', which does not exist; did you mean 'first'?"),
    ("${steps.third.run_id}", "refers to step 'third' (#3), which runs later"),
    ("${steps.second.run_id}", "refers to this step itself"),
    ("${steps.first.model}", "is not a reference"),
    ("${vars.valeu}", "unknown workflow variable 'valeu'; did you mean '${vars.value}'?"),
])
def test_bad_references_are_errors_naming_step_and_field(engine, ref, message):
    wf = parse_workflow(CHAIN.replace('source_run = "${steps.first.run_id}"', f'source_run = "{ref}"'))
    with pytest.raises(WorkflowValidationError) as info:
        run_workflow(engine, wf, apply_overrides(wf, {}))
    assert [(p.step, p.field) for p in info.value.problems] == [("second", "param 'source_run'")]
    assert message in str(info.value)


def test_references_are_validated_with_placeholders_of_the_right_type(engine):
    # a run id (a string) cannot feed an integer parameter: caught before anything runs
    wf = parse_workflow(CHAIN + '\n[steps.bad]\ntask = "wf_emit"\nparams = { value = "${steps.first.run_id}" }\n')
    with pytest.raises(WorkflowValidationError, match=r"(?s)step 'bad'.*param 'value': Not a valid integer"):
        run_workflow(engine, wf, apply_overrides(wf, {}))
    # outputs of unknown type stand in as valid values: the chain itself validates
    from gnomon.core.workflows import validate_workflow

    chain = parse_workflow(CHAIN)
    validate_workflow(engine, chain, apply_overrides(chain, {}))


# -- running -----------------------------------------------------------------------------------

def test_steps_run_as_children_of_one_parent_with_resolved_references(engine):
    wf = parse_workflow(CHAIN)
    result = run_workflow(engine, wf, apply_overrides(wf, {"value": "3"}), make_report=False)
    steps = result.by_name
    assert [s.status for s in result.steps] == ["ran"] * 4
    assert steps["first"].outputs == {"model_name": "model_a", "model_version": 3}
    assert _called("wf_use")[0] == {"source_run": steps["first"].run_id, "model": "model_a/3"}
    assert _called("wf_use")[1] == {"source_run": steps["second"].run_id, "model": "model_a/3"}
    client = engine.mlflow_client()
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["gnomon.workflow"] == "chain"
    assert parent.data.params["var.value"] == "3"
    children = _children(engine, result.run_id)
    assert set(children) == {"first", "second", "third", "side"}
    for name, run in children.items():
        assert run.info.status == "FINISHED"
        assert run.info.run_id == steps[name].run_id
        assert parent.data.tags[f"gnomon.step.{name}.run_id"] == run.info.run_id
    assert children["second"].data.params["source_run"] == steps["first"].run_id
    assert children["second"].data.params["factor"] == "1.5"


def test_the_first_failure_stops_the_workflow_and_names_the_step(engine):
    text = CHAIN.replace('[steps.third]', '[steps.broken]\ntask = "wf_fail"\n\n[steps.third]')
    wf = parse_workflow(text)
    with pytest.raises(WorkflowStepError) as info:
        run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    message = str(info.value)
    assert "stopped at step 'broken' (#3, task 'wf_fail')" in message
    assert "the task broke on purpose" in message and "marked FAILED" in message
    assert _called("wf_use") and len(_called("wf_use")) == 1  # 'third' never ran
    assert len(_called("wf_emit")) == 1  # nor 'side'
    client = engine.mlflow_client()
    parent = client.get_run(info.value.parent_run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["gnomon.failed_step"] == "broken"
    children = _children(engine, info.value.parent_run_id)
    assert children["broken"].info.status == "FAILED"
    assert children["first"].info.status == "FINISHED"


def test_a_missing_output_fails_the_step_with_the_known_outputs(engine):
    wf = parse_workflow(CHAIN.replace("${steps.second.outputs.echo}", "${steps.second.outputs.nope}"))
    with pytest.raises(WorkflowStepError, match=r"(?s)step 'third'.*has no output 'nope'; its outputs: echo"):
        run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)


# -- resume cache -------------------------------------------------------------------------------

def test_cache_key_covers_task_params_and_input_runs():
    base = cache_key("train", {"epochs": 3, "lr": 0.1}, {"data": "r1"})
    assert base == cache_key("train", {"lr": 0.1, "epochs": 3.0}, {"data": "r1"})  # order, 3 == 3.0
    assert base != cache_key("train", {"epochs": 4, "lr": 0.1}, {"data": "r1"})
    assert base != cache_key("train", {"epochs": 3, "lr": 0.1}, {"data": "r2"})
    assert base != cache_key("infer", {"epochs": 3, "lr": 0.1}, {"data": "r1"})


def test_resume_skips_identical_steps_and_reruns_changed_ones_with_their_dependents(engine):
    wf = parse_workflow(CHAIN)
    first = run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    calls = len(support.CALLS)

    again = run_workflow(engine, wf, apply_overrides(wf, {}), resume=True, make_report=False)
    assert [s.status for s in again.steps] == ["cached"] * 4
    assert len(support.CALLS) == calls
    assert [s.run_id for s in again.steps] == [s.run_id for s in first.steps]
    assert again.by_name["first"].outputs == {"model_name": "model_a", "model_version": 2}
    assert engine.mlflow_client().get_run(again.run_id).data.metrics["steps_cached"] == 4

    # 'second' gets a new factor: it re-runs, and so does 'third', whose own params did not change
    # but whose input run id did; 'first' and 'side' stay cached
    changed = run_workflow(engine, wf, apply_overrides(wf, {"factor": "2.5"}), resume=True, make_report=False)
    status = {s.name: s.status for s in changed.steps}
    assert status == {"first": "cached", "second": "ran", "third": "ran", "side": "cached"}
    assert changed.by_name["third"].inputs == {"second": changed.by_name["second"].run_id}
    assert changed.by_name["third"].run_id != first.by_name["third"].run_id

    # an upstream change cascades: a new value re-runs 'first', hence 'second' and 'third'
    cascade = run_workflow(engine, wf, apply_overrides(wf, {"value": "4", "factor": "2.5"}), resume=True,
                           make_report=False)
    status = {s.name: s.status for s in cascade.steps}
    assert status == {"first": "ran", "second": "ran", "third": "ran", "side": "cached"}

    # without --resume everything runs again
    fresh = run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    assert [s.status for s in fresh.steps] == ["ran"] * 4


def test_resume_after_a_failure_redoes_only_the_unfinished_steps(engine):
    text = CHAIN.replace('[steps.side]\ntask = "wf_emit"\nparams = { value = 5, label = "b" }',
                         '[steps.side]\ntask = "wf_fail"\nparams = { reason = "${vars.reason}" }')
    text = text.replace("fail = false", 'reason = "disk full"')
    wf = parse_workflow(text)
    with pytest.raises(WorkflowStepError, match="disk full"):
        run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    assert len(_called("wf_use")) == 2
    # the failed run is never reused: resuming retries it, the three finished steps are skipped
    with pytest.raises(WorkflowStepError, match="disk full"):
        run_workflow(engine, wf, apply_overrides(wf, {}), resume=True, make_report=False)
    assert len(_called("wf_use")) == 2 and len(_called("wf_fail")) == 2
    assert len(_called("wf_emit")) == 1


def test_an_interrupted_workflow_is_killed_and_resume_redoes_only_the_unfinished_steps(engine):
    text = CHAIN + '\n[steps.ctrl_c]\ntask = "wf_fail"\nparams = { interrupt = true, succeed = true }\n' \
        '\n[steps.after]\ntask = "wf_use"\nparams = { source_run = "${steps.ctrl_c.run_id}", model = "m/1" }\n'
    wf = parse_workflow(text)
    support.ARMED[:] = [True]
    with pytest.raises(KeyboardInterrupt):
        run_workflow(engine, wf, apply_overrides(wf, {}), make_report=False)
    client = engine.mlflow_client()
    parents = [r for r in _all_runs(engine) if "gnomon.workflow.step" not in r.data.tags]
    assert [p.info.status for p in parents] == ["KILLED"]
    children = _children(engine, parents[0].info.run_id)
    assert children["ctrl_c"].info.status == "KILLED" and "after" not in children
    assert client.get_run(parents[0].info.run_id).data.tags["gnomon.error"] == "interrupted"
    before = len(support.CALLS)

    # same inputs: the KILLED run of 'ctrl_c' is not reused, the four finished steps are
    result = run_workflow(engine, wf, apply_overrides(wf, {}), resume=True, make_report=False)
    status = {s.name: s.status for s in result.steps}
    assert status == {"first": "cached", "second": "cached", "third": "cached", "side": "cached",
                      "ctrl_c": "ran", "after": "ran"}
    assert [name for name, _ in support.CALLS[before:]] == ["wf_fail", "wf_use"]
