"""Sweeps: spec parsing and validation (nothing created for a bad spec), sharing of identical steps by
content key, one parent run per sweep, --resume of an interrupted sweep, and the leaderboard's statistics."""

from __future__ import annotations

import math

import pytest

from gnomon.core.workflows import WorkflowFileError, WorkflowValidationError, apply_overrides, parse_workflow
from gnomon.core.workflows.leaderboard import summarize
from gnomon.core.workflows.report_data import defense_effectiveness
from gnomon.core.workflows.sweep import parse_sweep, plan_sweep, run_sweep
from tests import test_workflows_support as support

FLOW = '''
[vars]
value = 2
factor = 1.5
seed = 0

[steps.first]
task = "wf_emit"
params = { value = "${vars.value}", label = "a", seed = "${vars.seed}" }

[steps.second]
task = "wf_use"
params = { source_run = "${steps.first.run_id}", model = "${steps.first.outputs.model_name}/1", factor = "${vars.factor}", seed = "${vars.seed}" }
'''


@pytest.fixture
def engine(gnomon_engine_factory):
    support.CALLS.clear()
    support.ARMED.clear()
    return gnomon_engine_factory(plugins=[support])


def _runs(engine, filter_string=""):
    client = engine.mlflow_client()
    exp = client.get_experiment_by_name(engine.experiment)
    return client.search_runs([exp.experiment_id], filter_string=filter_string) if exp else []


def test_cli_specs_and_the_sweep_table_make_a_typed_cartesian_product():
    wf = parse_workflow(FLOW + '\n[sweep]\nfactor = [0.5, 2]\nseed = [0, 1]\n')
    matrix = parse_sweep(wf, ["value=3,4"])
    assert matrix.axes == {"factor": (0.5, 2.0), "seed": (0, 1), "value": (3, 4)}
    assert len(matrix.combinations()) == 8
    assert matrix.combinations()[0] == {"factor": 0.5, "seed": 0, "value": 3}
    assert parse_sweep(wf, ["seed=5"]).axes["seed"] == (5,)  # --sweep replaces the file's axis
    assert parse_sweep(parse_workflow(FLOW), []) is None


@pytest.mark.parametrize("table, specs, message", [
    ("", ["valeu=1,2"], "--sweep valeu=1,2: unknown workflow variable 'valeu'; did you mean 'value'?"),
    ("", ["value=1,x"], "--sweep value=1,x: value 'x': expected an integer"),
    ("", ["value="], "--sweep value=: empty axis"),
    ("", ["value=1,,2"], "an empty value between commas"),
    ("", ["value"], "--sweep value: expected NAME=VALUE1,VALUE2"),
    ("value = []", [], "[sweep].value: empty axis"),
    ("value = [1, 2.5]", [], "[sweep].value: value 2.5: expected an integer"),
    ("value = [1, true]", [], "[sweep].value: value True"),
    ("valeu = [1]", [], "[sweep].valeu: unknown workflow variable"),
    ("value = [1, 2]\nseed = [0, 1]\nexclude = [{ value = 1 }, { value = 1, seed = 0 }]", [],
     "excludes [value=1,seed=0] again (already excluded by exclude[0])"),
    ("value = [1, 2]\nexclude = [{ value = 9 }]", [], "value = 9 is not one of the axis values"),
])
def test_bad_sweep_specs_are_refused_naming_the_spec(table, specs, message):
    wf = parse_workflow(FLOW + ("\n[sweep]\n" + table + "\n" if table else ""), source="flow.toml")
    with pytest.raises(WorkflowFileError) as info:
        parse_sweep(wf, specs)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_every_combination_is_validated_before_anything_runs(engine):
    wf = parse_workflow(FLOW)
    matrix = parse_sweep(wf, ["value=1,0,3", "seed=0,1"])  # value 0 breaks Range(min=1)
    with pytest.raises(WorkflowValidationError) as info:
        plan_sweep(engine, wf, apply_overrides(wf, {}), matrix)
    bad = {p.step for p in info.value.problems}
    assert bad == {"first (sweep combination value=0,seed=0)", "first (sweep combination value=0,seed=1)"}
    assert _runs(engine) == [] and support.CALLS == []


def test_identical_steps_run_once_and_resume_runs_only_missing_steps(engine):
    wf = parse_workflow(FLOW)
    matrix = parse_sweep(wf, ["factor=0.5,1,2", "seed=0,1"])
    plan = plan_sweep(engine, wf, apply_overrides(wf, {}), matrix)
    # 'first' does not use factor: one per seed; 'second' differs everywhere
    assert plan.total_steps == 12 and len(plan.unique_steps()) == 2 + 6
    result = run_sweep(engine, plan, make_report=False)
    assert [name for name, _ in support.CALLS].count("wf_emit") == 2
    assert [name for name, _ in support.CALLS].count("wf_use") == 6
    assert (result.steps_ran, result.steps_shared) == (8, 4)
    # counted from MLflow: one run per distinct step, one workflow run per combination under one sweep run
    assert len(_runs(engine, "tags.`gnomon.task` = 'wf_emit'")) == 2
    assert len(_runs(engine, "tags.`gnomon.task` = 'wf_use'")) == 6
    combos = _runs(engine, f"tags.`gnomon.sweep.parent` = '{result.run_id}'")
    assert len(combos) == 6
    assert {(r.data.tags["gnomon.sweep.var.factor"], r.data.tags["gnomon.sweep.var.seed"]) for r in combos} == \
        {(f, s) for f in ("0.5", "1.0", "2.0") for s in ("0", "1")}
    assert all(r.data.tags["mlflow.parentRunId"] == result.run_id for r in combos)
    # a shared step reuses the first combination's run
    first_runs = {r.by_name["first"].run_id for _, r in result.combinations}
    assert len(first_runs) == 2

    # resume with one more factor: only that factor's 'second' steps run
    calls = len(support.CALLS)
    wider = plan_sweep(engine, wf, apply_overrides(wf, {}), parse_sweep(wf, ["factor=0.5,1,2,4", "seed=0,1"]))
    again = run_sweep(engine, wider, resume=True, make_report=False)
    assert [name for name, _ in support.CALLS[calls:]] == ["wf_use", "wf_use"]
    assert again.steps_ran == 2


def test_an_interrupted_sweep_is_killed_and_resume_runs_only_the_missing_steps(engine):
    text = FLOW + '\n[steps.stop]\ntask = "wf_fail"\nparams = { interrupt = true, succeed = true, reason = "f${vars.factor}" }\n'
    wf = parse_workflow(text)
    plan = plan_sweep(engine, wf, apply_overrides(wf, {}), parse_sweep(wf, ["factor=0.5,2", "seed=0,1"]))
    support.ARMED[:] = [True]
    with pytest.raises(KeyboardInterrupt):
        run_sweep(engine, plan, make_report=False)
    sweep = _runs(engine, "tags.`gnomon.sweep` = 'workflow'")
    assert [r.info.status for r in sweep] == ["KILLED"]
    before = len(support.CALLS)
    assert [name for name, _ in support.CALLS] == ["wf_emit", "wf_use", "wf_fail"]
    result = run_sweep(engine, plan, resume=True, make_report=False)
    ran = [name for name, _ in support.CALLS[before:]]
    # combination 1: first and second cached, the KILLED stop re-runs; then the other three combinations,
    # sharing what is identical ('first' per seed, 'stop' per factor: it has no seed)
    assert ran.count("wf_emit") == 1 and ran.count("wf_use") == 3 and ran.count("wf_fail") == 2
    assert result.steps_cached == 2
    assert _runs(engine, f"tags.`gnomon.sweep.parent` = '{result.run_id}'")[0].info.status == "FINISHED"


def test_statistics_and_der():
    stat = summarize([0.9, 0.8, 1.0])
    assert math.isclose(stat.mean, 0.9) and math.isclose(stat.std, 0.1)
    assert math.isclose(stat.ci95, 4.302652729749464 * 0.1 / math.sqrt(3), rel_tol=1e-9)  # t(0.975, 2)
    assert summarize([0.5]).ci95 is None and summarize([]).mean is None
    # BackdoorBench's FT-SAM paper, FT on BadNets: ACC 91.82 -> 90.29, ASR 93.79 -> 1.70: DER 95.28
    assert math.isclose(defense_effectiveness(0.9182, 0.9379, 0.9029, 0.0170), 0.9528, abs_tol=1e-4)
    assert defense_effectiveness(0.9, 1.0, 0.95, 1.0) == 0.5  # a gain in accuracy does not count
    assert defense_effectiveness(0.9, None, 0.9, 0.1) is None
